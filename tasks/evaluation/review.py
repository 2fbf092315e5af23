"""Where a person should look first: the evaluated images with the most missed or spurious boxes
(often a label error, not a model error), each as LabelImg files and an overlay.

    review/images/<name>.jpg              the image, so LabelImg opens the folder
    review/ground_truth/<name>.xml        its labels, as LabelImg writes them
    review/predictions/<name>.xml         the model's boxes at or above the threshold
    review/overlays/<name>.jpg            truth in green, predictions in class colours
    review/review_gallery.png             all of them on one page (a Prefect artifact)
    review/review.json                    rank, image, missed, spurious, files
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tasks.core.records import Box
from tasks.evaluation.plots import predictions_grid_png
from tasks.images.overlay import TRUTH_COLOUR, draw_boxes
from tasks.ingest.labelimg_writer import labelimg_xml
from tasks.scoring.coco import IOU_MATCH
from tasks.scoring.generation import DEFAULT_THRESHOLD
from tasks.scoring.threshold import at_or_above, missed_and_spurious

REVIEW_IMAGES = 8
REVIEW_GALLERY = "review/review_gallery.png"


def worst_images(truths: list[list[Box]], predictions: list[tuple[list[Box], list[float]]],
                 threshold: float = DEFAULT_THRESHOLD, count: int = REVIEW_IMAGES,
                 per_class: dict[str, float] | None = None) -> list[tuple[int, int, int]]:
    """(index, missed, spurious) of the `count` images with the most errors (ties: dataset
    order), at `threshold` or a class's own in `per_class`; images without an error are never
    listed."""
    errors = [(index, *missed_and_spurious(truth, boxes, scores, threshold, per_class))
              for index, (truth, (boxes, scores)) in enumerate(zip(truths, predictions, strict=True))]
    ranked = sorted((e for e in errors if e[1] + e[2]), key=lambda e: (-(e[1] + e[2]), e[0]))
    return ranked[:count]


def file_stem(image_id: str) -> str:
    """A file name from an image id (a path inside the source, maybe with `#hflip`)."""
    return re.sub(r"[^\w.-]+", "_", Path(image_id.split("#")[0]).stem, flags=re.UNICODE)[:80]


def write_review(out_dir: str | Path, rows, truths: list[list[Box]],
                 predictions: list[tuple[list[Box], list[float]]], labels: list[str],
                 threshold: float = DEFAULT_THRESHOLD, count: int = REVIEW_IMAGES,
                 per_class: dict[str, float] | None = None) -> list[dict]:
    """Write `out_dir/review/` for the worst images of `rows` (a dataset split whose order
    matches `truths` and `predictions`); returns what review.json lists."""
    review = Path(out_dir) / "review"
    shutil.rmtree(review, ignore_errors=True)  # never a stale image from an earlier evaluation
    listed, grid = [], []
    for rank, (index, missed, spurious) in enumerate(
            worst_images(truths, predictions, threshold, count, per_class), start=1):
        row = rows[index]
        image = row["image"].convert("RGB")
        name = f"{rank:02d}-{file_stem(row['image_id'])}"
        boxes, scores = predictions[index]
        kept_boxes, kept_scores = at_or_above(boxes, scores, threshold, per_class)
        files = {"image": f"images/{name}.jpg", "ground_truth": f"ground_truth/{name}.xml",
                 "predictions": f"predictions/{name}.xml", "overlay": f"overlays/{name}.jpg"}
        for path in files.values():
            (review / path).parent.mkdir(parents=True, exist_ok=True)
        image.save(review / files["image"], quality=95)
        for key, found in (("ground_truth", truths[index]), ("predictions", kept_boxes)):
            (review / files[key]).write_bytes(labelimg_xml(review / files["image"], image.width,
                                                           image.height, 3, found))
        overlay = draw_boxes(image, truths[index], [None] * len(truths[index]),
                             colour=TRUTH_COLOUR)
        draw_boxes(overlay, kept_boxes, kept_scores, labels).save(
            review / files["overlay"], quality=90)
        listed.append({"rank": rank, "image_id": row["image_id"], "missed": missed,
                       "spurious": spurious, "files": files})
        grid.append((image, f"#{rank} {row['image_id']}\nmissed {missed}, spurious {spurious}",
                     truths[index], kept_boxes, kept_scores))
    if listed:
        (review / "review.json").write_text(json.dumps(
            {"threshold": threshold, "class_thresholds": per_class or {}, "iou": IOU_MATCH,
             "images": listed}, indent=1,
            ensure_ascii=False))
        predictions_grid_png(grid, Path(out_dir) / REVIEW_GALLERY,
                             title="look here first: the most missed (green without red) or "
                             "spurious (red without green) boxes")
    return listed
