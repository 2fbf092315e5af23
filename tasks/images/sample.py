"""One candidate through the image step: inspect (memoized by content), fit its boxes, apply the
grayscale policy, render the training flips while the pixels are decoded. Free of Prefect, so
that the image workers (`workers.py`) start in a fraction of a second."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from pydantic import BaseModel

from tasks.core.config import DatasetConfig, ImageLimits, SplitConfig
from tasks.core.records import Rejection, Sample, box_rejections
from tasks.core.splits import split_of
from tasks.images.boxes import fit_boxes, orient
from tasks.images.store import ContentStore, derived_image, flip_op, inspect_and_decode, output_op

OUTPUT_LISTS = ("kept", "dropped_grayscale", "rejected", "rejected_boxes")


class ImageStepConfig(BaseModel, frozen=True):
    """The config this step depends on (and nothing else, so other edits keep its cache)."""

    grayscale: str
    images: ImageLimits
    # The training images' flips are rendered here, from the pixels decoded for the checks, so
    # that each source image is decoded once; the augment step then finds them made.
    split: SplitConfig = SplitConfig()
    flips: tuple[str, ...] = ()


def image_step_config(config: DatasetConfig) -> ImageStepConfig:
    return ImageStepConfig(grayscale=config.grayscale, images=config.images, split=config.split,
                           flips=config.augment.kinds)


@dataclass
class ShardResult:
    kept: list[Sample] = field(default_factory=list)
    dropped_grayscale: list[Sample] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    rejected_boxes: list[Rejection] = field(default_factory=list)
    # boxes_clipped, grayscale_detected, and the work done: images_decoded / _reused / _encoded
    counters: Counter = field(default_factory=Counter)


def _boxes_in_image_frame(sample: Sample, raw_w: int, raw_h: int, width: int, height: int,
                          orientation: int) -> list | None:
    """Boxes in the oriented image's frame, or None when the declared size fits no frame.

    Annotators (LabelImg included) draw on the stored pixels, so with an EXIF rotation the boxes
    are rotated along, unless the declared size names the already-rotated picture."""
    declared = (sample.declared_width, sample.declared_height)
    if None in declared:
        declared = (raw_w, raw_h)
    if orientation != 1 and declared == (raw_w, raw_h):
        return [orient(box, orientation, raw_w, raw_h) for box in sample.boxes]
    if declared == (width, height):
        return list(sample.boxes)
    return None


def _quarantine(sample: Sample, reason: str, detail: str, result: ShardResult) -> None:
    result.rejected.append(Rejection(item=sample.item, reason=reason, detail=detail))
    # Its boxes leave with it, each counted under a reason.
    result.rejected_boxes += box_rejections(sample.item, len(sample.boxes), "image_rejected", reason)


def process_sample(sample: Sample, config: ImageStepConfig, store: ContentStore,
                   result: ShardResult) -> None:
    limits = config.images
    try:
        inspection, reused, decoded = inspect_and_decode(sample.image_path, store,
                                                         limits.max_pixels, limits.gray_tolerance)
    except FileNotFoundError:
        _quarantine(sample, "image_missing", f"{sample.image_path} disappeared", result)
        return
    except OSError as exc:
        _quarantine(sample, "image_unreadable", f"{type(exc).__name__}: {exc}", result)
        return
    result.counters["images_reused" if reused else "images_decoded"] += 1
    if not inspection.ok:
        _quarantine(sample, inspection.reason, inspection.detail, result)
        return
    boxes = _boxes_in_image_frame(sample, inspection.raw_width, inspection.raw_height,
                                  inspection.width, inspection.height, inspection.orientation)
    if boxes is None:
        _quarantine(sample, "size_mismatch",
                    f"annotation says {sample.declared_width}x{sample.declared_height}, "
                    f"image is {inspection.width}x{inspection.height}", result)
        return
    kept_boxes, unfit_boxes, clipped = fit_boxes(boxes, sample.item, inspection.width,
                                                    inspection.height, limits.min_box_size)
    sample = sample.model_copy(update={
        "sha256": inspection.sha256, "width": inspection.width, "height": inspection.height,
        "mode": inspection.mode, "grayscale": inspection.grayscale, "boxes": kept_boxes,
        "image_format": inspection.format,
    })
    if inspection.grayscale:
        result.counters["grayscale_detected"] += 1
        if config.grayscale == "drop":
            result.dropped_grayscale.append(sample)
            result.rejected_boxes += box_rejections(sample.item, len(kept_boxes),
                                                    "image_dropped_grayscale")
            result.rejected_boxes.extend(unfit_boxes)
            return
    op = output_op(inspection, config.grayscale)
    if op is not None:
        try:
            path, reused_image = derived_image(sample.image_path, inspection.sha256, op,
                                               inspection.format, limits.max_pixels, store, decoded)
        except (OSError, ValueError) as exc:
            _quarantine(sample, "image_unreadable", f"re-encoding failed: {exc}", result)
            return
        result.counters["encodes_reused" if reused_image else "images_encoded"] += 1
        sample = sample.model_copy(update={"processed_path": path, "image_op": op})
    if inspection.grayscale and config.grayscale == "convert":
        # 3-channel in the dataset: re-encoded from L/P/16-bit, or RGB with gray content as is.
        result.counters["grayscale_converted"] += 1
    result.counters["boxes_clipped"] += clipped
    result.rejected_boxes.extend(unfit_boxes)
    result.kept.append(sample)
    if decoded is not None and config.flips and split_of(inspection.sha256, config.split) == "train":
        render_flips(sample, decoded, config, store, result)


def render_flips(sample: Sample, decoded: Image.Image, config: ImageStepConfig, store: ContentStore,
                 result: ShardResult) -> None:
    """The flipped copies the augment step will ask for (`flip_op`), made from the pixels
    at hand. A failure here only means the augment step makes them (or reports them) itself."""
    for kind in config.flips:
        try:
            _, reused = derived_image(sample.image_path, sample.sha256, flip_op(sample.image_op, kind),
                                      sample.image_format, config.images.max_pixels, store, decoded)
        except (OSError, ValueError):
            continue
        if not reused:
            result.counters["images_encoded"] += 1
            result.counters["flips_rendered"] += 1


@dataclass
class LineOutcome:
    """What the step made of one candidate line: (output list, JSON line) pairs in order, its
    counters, whether it may be remembered, and the files a remembered answer needs."""

    made: list[tuple[str, str]]
    counters: dict[str, int]
    memoable: bool
    paths: list[str]


def process_lines(lines: list[str], config: ImageStepConfig, store_root: str | Path) -> list[LineOutcome]:
    """Each candidate line processed (in a worker process or in the caller's thread)."""
    store = ContentStore(store_root)
    outcomes = []
    for line in lines:
        result = ShardResult()
        process_sample(Sample.model_validate_json(line), config, store, result)
        outcomes.append(LineOutcome(
            made=[(name, record.model_dump_json()) for name in OUTPUT_LISTS
                  for record in getattr(result, name)],
            counters=dict(result.counters),
            # an image that is missing now may be back tomorrow: asked again, not remembered
            memoable=not any(r.reason == "image_missing" for r in result.rejected),
            paths=[s.processed_path for s in result.kept if s.processed_path]))
    return outcomes
