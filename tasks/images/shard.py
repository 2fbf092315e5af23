"""The image step for a shard of candidates: inspect (memoized), fit boxes, apply the grayscale
policy, and render the training images' flips while their pixels are decoded."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from prefect import task
from pydantic import BaseModel

from tasks.core import progress
from tasks.core.caching import IMAGE_LIBRARIES, cache_policy, code_version
from tasks.core.config import DatasetConfig, ImageLimits, SplitConfig
from tasks.core.memo import LineMemo
from tasks.core.records import Manifest, ManifestWriter, Rejection, Sample, box_rejections, read_lines
from tasks.core.splits import split_of
from tasks.images.boxes import fit_boxes, orient
from tasks.images.store import (
    ContentStore,
    derived_image,
    flip_op,
    inspect_and_decode,
    output_op,
    pillow_key,
)


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


OUTPUT_LISTS = ("kept", "dropped_grayscale", "rejected", "rejected_boxes")


def as_reused(counters: dict[str, int]) -> Counter:
    """Work remembered from an earlier run, as work done by no one now: what it decoded or
    encoded then counts as reused."""
    reused = Counter(counters)
    reused["images_reused"] += reused.pop("images_decoded", 0)
    reused["encodes_reused"] += reused.pop("images_encoded", 0)
    return Counter({k: v for k, v in reused.items() if v})


def sample_memo(config: ImageStepConfig, store_root: str | Path) -> LineMemo:
    """What the step made of each candidate line (which names its image's path, size and mtime,
    as `make` judges a file, with its boxes): a shard re-run because a new image fell into it
    opens none of the images it had."""
    return LineMemo(store_root, "images", "|".join([config.model_dump_json(), code_version(),
                                                    pillow_key()]))


def process_shard(lines: list[str], config: ImageStepConfig, store_root: str | Path,
                  on_image: Callable[[], None] | None = None) -> dict[str, list[str]]:
    """The shard's output lines (OUTPUT_LISTS, plus the counters), each candidate line answered
    from the memo or processed and remembered."""
    store, memo = ContentStore(store_root), sample_memo(config, store_root)
    outputs: dict[str, list[str]] = {name: [] for name in OUTPUT_LISTS}
    counters: Counter = Counter()
    for line in lines:
        hit = memo.get(line)
        if hit is not None and all(Path(p).is_file() for p in hit[1]["paths"]):
            for name, out in zip(hit[1]["lists"], hit[0], strict=True):
                outputs[name].append(out)
            counters.update(as_reused(hit[1]["counters"]))
        else:
            result = ShardResult()
            sample = Sample.model_validate_json(line)
            process_sample(sample, config, store, result)
            made = [(name, record.model_dump_json()) for name in OUTPUT_LISTS
                    for record in getattr(result, name)]
            for name, out in made:
                outputs[name].append(out)
            counters.update(result.counters)
            if not any(r.reason == "image_missing" for r in result.rejected):  # may come back
                memo.put(line, [out for _, out in made], {
                    "lists": [name for name, _ in made], "counters": dict(result.counters),
                    "paths": [s.processed_path for s in result.kept if s.processed_path]})
        if on_image is not None:
            on_image()
    memo.save()
    return {**outputs, "counters": counters}


class ShardOutput(BaseModel, frozen=True):
    kept: Manifest
    dropped_grayscale: Manifest
    rejected: Manifest
    rejected_boxes: Manifest
    counters: dict[str, int]


def _shard_memo(shard: Manifest, config: ImageStepConfig, store_root: str | Path,
                manifests_dir: str | Path) -> Path:
    """Where the output of this shard under this config is remembered. The shard's digest
    covers each image's path, size and mtime (as `make` judges a file), its boxes and declared
    size; the code version and Pillow's version cover how the answer was computed."""
    key = hashlib.sha256("|".join([shard.digest, config.model_dump_json(), str(manifests_dir),
                                   code_version(), pillow_key()]).encode()).hexdigest()[:32]
    return Path(store_root) / "shards" / key[:2] / f"{key}.json"


def remembered(memo: Path) -> ShardOutput | None:
    """The output remembered in `memo`, as work done by no one (`as_reused`). None if there is
    none (or its manifests are gone)."""
    if not memo.is_file():
        return None
    output = ShardOutput.model_validate_json(memo.read_bytes())
    manifests = (output.kept, output.dropped_grayscale, output.rejected, output.rejected_boxes)
    if not all(Path(m.path).is_file() for m in manifests):
        return None
    return output.model_copy(update={"counters": dict(as_reused(output.counters))})


def _write_lines(lines: list[str], manifests_dir: str | Path, kind: str) -> Manifest:
    with ManifestWriter(manifests_dir, kind) as out:
        for line in lines:
            out.add_line(line)
    return out.manifest


def process_images_step(shard: Manifest, config: ImageStepConfig, store_root: str | Path,
                       manifests_dir: str | Path) -> ShardOutput:
    """The shard's images inspected and rendered; a shard seen before (same images, same
    config) is answered from its memo without opening an image, with or without Prefect, and
    so is each image seen before in a shard that changed."""
    memo = _shard_memo(shard, config, store_root, manifests_dir)
    if (known := remembered(memo)) is not None:
        return known
    made = process_shard(list(read_lines(shard)), config, store_root, on_image=progress.advance)
    output = ShardOutput(
        kept=_write_lines(made["kept"], manifests_dir, "kept"),
        dropped_grayscale=_write_lines(made["dropped_grayscale"], manifests_dir, "dropped-gray"),
        rejected=_write_lines(made["rejected"], manifests_dir, "rejected"),
        rejected_boxes=_write_lines(made["rejected_boxes"], manifests_dir, "rejected-boxes"),
        counters=dict(made["counters"]),
    )
    ContentStore(store_root).write(memo, output.model_dump_json().encode())
    return output


@task(name="process-images", cache_policy=cache_policy(IMAGE_LIBRARIES), persist_result=True)
def process_images_task(shard: Manifest, config: ImageStepConfig, store_root: str,
                       manifests_dir: str) -> ShardOutput:
    return process_images_step(shard, config, store_root, manifests_dir)
