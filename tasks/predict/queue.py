"""The labelling queue: which inbox images a person should label first, the ones that should
teach the model most.

    OUT/queue.csv           rank, image, score, reasons (one row per image without a verified XML)
    OUT/queue_gallery.png   the top images with the model's boxes

An image scores for each box the model is unsure of (its confidence within a factor 2 of its
class's threshold, either side: Roboflow's "close to the threshold"), for each box its
horizontally flipped copy does not agree with (a box found in one of the two only), for classes
that are rare in the dataset, and a little for many detections. An image that looks like one
ranked above it (perceptual average hash, 64 bits, a few bits apart) is pushed below every
image that does not: labelling both teaches little more than labelling one.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.logs import run_logger
from tasks.core.records import Box
from tasks.ingest.inbox import verified_mark
from tasks.scoring.coco import IOU_MATCH, iou
from tasks.scoring.threshold import at_or_above

NEAR = 2.0  # "unsure": within this factor of the threshold, either side
DUPLICATE_BITS = 6  # average hashes this close (of 64 bits) are the same picture, near enough
WEIGHTS = {"near_threshold": 1.0, "flip_disagrees": 1.0, "rare_class": 0.5, "detections": 0.25}


@dataclass
class Candidate:
    """An inbox image and what the model said about it and about its mirror image."""

    item: str
    boxes: list[Box]  # every box the model gave, whatever its confidence
    scores: list[float]
    flipped: list[Box]  # the mirror image's boxes at the threshold, mapped back
    image_hash: int
    reasons: dict[str, float] = field(default_factory=dict)
    score: float = 0.0


def average_hash(image: Image.Image) -> int:
    """64 bits: each pixel of the 8 x 8 grey thumbnail above the mean or not."""
    small = ImageOps.grayscale(image).resize((8, 8), Image.Resampling.BOX)
    pixels = list(small.getdata())
    mean = sum(pixels) / 64
    return sum(1 << i for i, value in enumerate(pixels) if value > mean)


def mirrored_back(boxes: list[Box], width: int) -> list[Box]:
    """Boxes found on the horizontally flipped image, in the image's own coordinates."""
    return [box.model_copy(update={"x1": width - box.x2, "x2": width - box.x1}) for box in boxes]


def unsure_boxes(boxes: list[Box], scores: list[float], threshold: float,
                 per_class: dict[str, float]) -> float:
    """Sum over boxes of how close each is to its threshold: 1 at it, 0 at a factor NEAR off."""
    total = 0.0
    for box, score in zip(boxes, scores, strict=True):
        cut = per_class.get(box.label, threshold)
        if score > 0 and cut > 0:
            total += max(0.0, 1 - abs(math.log(score / cut)) / math.log(NEAR))
    return total


def disagreements(kept: list[Box], flipped: list[Box]) -> int:
    """Boxes found on one of the image and its mirror only (same class, IoU >= 0.5 agree)."""
    taken = [False] * len(flipped)
    agreed = 0
    for box in kept:
        for j, other in enumerate(flipped):
            if not taken[j] and other.label == box.label and iou(box, other) >= IOU_MATCH:
                taken[j] = True
                agreed += 1
                break
    return len(kept) + len(flipped) - 2 * agreed


def rare_classes(kept: list[Box], class_counts: dict[str, int]) -> float:
    """For each class among the boxes: 1 - its share of the commonest class's count."""
    if not class_counts:
        return 0.0
    most = max(class_counts.values())
    return sum(1 - class_counts.get(label, 0) / most for label in {box.label for box in kept})


def rank_queue(candidates: list[Candidate], threshold: float, per_class: dict[str, float],
               class_counts: dict[str, int] | None = None) -> list[Candidate]:
    """The candidates best first, each with its score and reasons (see the module's text)."""
    for candidate in candidates:
        kept = at_or_above(candidate.boxes, candidate.scores, threshold, per_class)[0]
        parts = {"near_threshold": unsure_boxes(candidate.boxes, candidate.scores, threshold,
                                                per_class),
                 "flip_disagrees": float(disagreements(kept, candidate.flipped)),
                 "rare_class": rare_classes(kept, class_counts or {}),
                 "detections": math.log1p(len(kept))}
        candidate.reasons = {name: round(value, 3) for name, value in parts.items() if value > 0}
        candidate.score = sum(WEIGHTS[name] * value for name, value in parts.items())
    ranked = sorted(candidates, key=lambda c: (-c.score, c.item))
    first, later = [], []
    for candidate in ranked:
        twin = next((c for c in first if bin(c.image_hash ^ candidate.image_hash).count("1")
                     <= DUPLICATE_BITS), None)
        if twin is None:
            first.append(candidate)
        else:
            candidate.reasons["near_duplicate_of"] = twin.item
            later.append(candidate)
    return first + later


def class_counts_of(work_dir: Path) -> dict[str, int] | None:
    """Boxes per class in a line's last prepared dataset (its prepare_report.json), if any."""
    import json

    report = Path(work_dir) / "prepared" / "prepare_report.json"
    return json.loads(report.read_text()).get("classes") if report.is_file() else None


def write_queue(ranked: list[Candidate], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "image", "score", "reasons"])
        for rank, candidate in enumerate(ranked, start=1):
            reasons = "; ".join(f"{name} {value}" for name, value in candidate.reasons.items())
            writer.writerow([rank, candidate.item, f"{candidate.score:.4f}", reasons])


def queue_inbox(inbox: str | Path, out_dir: str | Path, model, processor, settings,
                class_counts: dict[str, int] | None = None, gallery_images: int = 12) -> dict:
    """Rank the inbox images without a verified XML (none, or a model's pre-label) and write
    OUT/queue.csv and OUT/queue_gallery.png; returns the counts and the top of the queue."""
    from tasks.evaluation.plots import predictions_grid_png
    from tasks.predict.folder import kept_boxes, predict_loaded, predict_stream
    from tasks.predict.inputs import LoadedImage, list_inputs, load_input

    inbox, out = Path(inbox), Path(out_dir)
    inputs, rejected = list_inputs(inbox) if inbox.is_dir() else ([], [])
    # done: an image whose XML carries LabelImg's "Verify Image" mark (the one the inbox's
    # adoption reads); none, a pre-label, or an XML that cannot be read safely is still to label
    waiting = [image for image in inputs if verified_mark(image.path.with_suffix(".xml")) is not True]
    candidates = []
    for loaded, prediction in predict_stream(waiting, model, processor, settings, rejected, "queue"):
        mirror = LoadedImage(source=loaded.source, image=ImageOps.mirror(loaded.image),
                             depth=loaded.depth)
        flipped = kept_boxes(predict_loaded(model, processor, [mirror], settings)[0], settings)[0]
        candidates.append(Candidate(item=loaded.source.item, boxes=prediction.boxes,
                                    scores=prediction.scores,
                                    flipped=mirrored_back(flipped, loaded.image.width),
                                    image_hash=average_hash(loaded.image)))
    ranked = rank_queue(candidates, settings.threshold, settings.class_thresholds, class_counts)
    write_queue(ranked, out / "queue.csv")
    by_item = {image.item: image for image in waiting}
    gallery = []
    for rank, candidate in enumerate(ranked[:gallery_images], start=1):
        loaded = load_input(by_item[candidate.item], settings.max_pixels)
        boxes, scores = at_or_above(candidate.boxes, candidate.scores, settings.threshold,
                                    settings.class_thresholds)
        gallery.append((loaded.image, f"#{rank} {candidate.item}\nscore {candidate.score:.2f}",
                        [], boxes, scores))
    if gallery:
        predictions_grid_png(gallery, out / "queue_gallery.png", title="label these first: "
                             "the model's boxes (red) where it is unsure or its mirror disagrees")
    return {"inbox": str(inbox), "images": len(inputs), "verified": len(inputs) - len(waiting),
            "queued": len(ranked), "quarantined": len(rejected),
            "top": [{"rank": rank, "image": c.item, "score": round(c.score, 4),
                     "reasons": c.reasons} for rank, c in enumerate(ranked[:10], start=1)],
            "queue": str(out / "queue.csv"),
            "gallery": str(out / "queue_gallery.png") if gallery else None}


@task(name="queue", cache_policy=NO_CACHE)
def queue_task(inbox: str, model_dir: str, out_dir: str, settings,
               class_counts: dict[str, int] | None = None) -> dict:
    """The labelling queue with the model in `model_dir`; its gallery becomes the run's image
    artifact `labelling-queue`, its top rows a table artifact. Never cached: the inbox changes."""
    from prefect.artifacts import create_image_artifact, create_table_artifact

    from tasks.evaluation.evaluate import png_data_url
    from tasks.training.models import load_finetuned_detector

    processor, model = load_finetuned_detector(model_dir)
    result = queue_inbox(inbox, out_dir, model, processor, settings, class_counts)
    if result["gallery"]:
        create_image_artifact(image_url=png_data_url(result["gallery"]), key="labelling-queue",
                              description="label these first (queue.csv has them all)")
    create_table_artifact(key="labelling-queue-top", table=[
        {"rank": row["rank"], "image": row["image"], "score": row["score"],
         "reasons": "; ".join(f"{k} {v}" for k, v in row["reasons"].items())}
        for row in result["top"]], description="the top of the labelling queue")
    run_logger().info(f"labelling queue: {result['queued']} inbox images ranked "
                      f"({result['verified']} verified already) -> {result['queue']}")
    return result
