"""Suspect labels: where a trained detector and the labels disagree in a way that points at the
label (FiftyOne's "mistakenness", for a LabelImg dataset).

    OUT/suspects.json          counts per kind and class (every split) and each suspect of the
                               train and validation splits (the test split is only counted)
    OUT/images/<n>-<stem>.jpg  the image, with side by side
    OUT/labels/<n>-<stem>.xml      its labels as LabelImg reads them,
    OUT/model/<n>-<stem>.xml       the model's boxes at its thresholds (`verified="no"`)
    OUT/suspects_gallery.png   the images with the most suspects: labels green, model red

Kinds, with "confident" = at or above the class's threshold (the model's, per class):
- `possible_missing`: a confident box that overlaps no label (IoU < 0.1): a defect nobody drew;
- `possible_wrong_class`: a confident box on a label of another class (IoU >= 0.5) that no
  confident box of the label's own class matches;
- `possible_spurious`: a label that no confident box overlaps (IoU < 0.1): nothing there?
- `loose_box`: a confident box of the label's class overlapping it only 0.3 <= IoU < 0.5.
A model agrees with the labels it learnt from: on its own training images it has seen every
label, mistakes included, so a list made on them finds fewer than there are (README).
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.logs import run_logger
from tasks.core.records import Box
from tasks.scoring.coco import IOU_MATCH, iou
from tasks.scoring.threshold import at_or_above

SEEN_IOU = 0.1  # below this, a box and a label are about different things
LOOSE_IOU = 0.3
KINDS = ("possible_missing", "possible_wrong_class", "possible_spurious", "loose_box")


def _corners(box: Box) -> list[float]:
    return [round(v, 1) for v in (box.x1, box.y1, box.x2, box.y2)]


def label_suspects(labels: list[Box], boxes: list[Box], scores: list[float], threshold: float,
                   per_class: dict[str, float] | None = None) -> list[dict]:
    """The suspects of one image (see the module's text), each {kind, class, label, model,
    score}: `label` and `model` the boxes involved (None where there is none)."""
    confident = list(zip(*at_or_above(boxes, scores, threshold, per_class), strict=True))
    found: list[dict] = []

    def add(kind: str, label: Box | None, model: Box | None, score: float | None) -> None:
        found.append({"kind": kind, "class": (label or model).label,
                      "label": _corners(label) if label else None,
                      "model": _corners(model) if model else None,
                      "model_class": model.label if model else None,
                      "score": None if score is None else round(score, 4)})

    matched_labels = {i for i, label in enumerate(labels)
                      if any(b.label == label.label and iou(b, label) >= IOU_MATCH
                             for b, _ in confident)}
    for box, score in confident:
        same = [(iou(box, label), label) for label in labels if label.label == box.label]
        other = [(iou(box, label), i, label) for i, label in enumerate(labels)
                 if label.label != box.label]
        best_same = max(same, default=(0.0, None), key=lambda pair: pair[0])
        best_other = max(other, default=(0.0, -1, None), key=lambda triple: triple[0])
        if best_same[0] >= IOU_MATCH:
            continue  # the model agrees with a label
        if best_other[0] >= IOU_MATCH and best_other[1] not in matched_labels:
            add("possible_wrong_class", best_other[2], box, score)
        elif best_same[0] >= LOOSE_IOU:
            add("loose_box", best_same[1], box, score)
        elif max(best_same[0], best_other[0]) < SEEN_IOU:
            add("possible_missing", None, box, score)
    for label in labels:
        if all(iou(box, label) < SEEN_IOU for box, _ in confident):
            add("possible_spurious", label, None, None)
    return found


def suspect_counts(entries: list[dict]) -> dict:
    """{kind: {class: n}} with every kind present."""
    counts = {kind: Counter() for kind in KINDS}
    for entry in entries:
        counts[entry["kind"]][entry["class"]] += 1
    return {kind: dict(sorted(per_class.items())) for kind, per_class in counts.items()}


def find_suspects(dataset_dir: str | Path, out_dir: str | Path, model, processor, settings,
                  splits: tuple[str, ...] = ("train", "validation", "test"),
                  gallery_images: int = 12, only: set[str] | None = None) -> dict:
    """Predict every original (unflipped) row of `splits` (with `only`: of those source images)
    and list where the labels look wrong; writes OUT/ (see the module's text) and returns
    suspects.json's content."""
    from tqdm.auto import tqdm

    from tasks.dataset.loading import load_published
    from tasks.evaluation.plots import predictions_grid_png
    from tasks.evaluation.review import file_stem
    from tasks.ingest.labelimg_writer import labelimg_xml
    from tasks.scoring.generation import predict_batch
    from tasks.scoring.score import original_rows, truth_boxes

    out = Path(out_dir)
    loaded = load_published(dataset_dir)
    listed, counted, gallery = [], [], []
    written = checked = 0
    for split in (name for name in splits if name in loaded):
        rows = original_rows(loaded[split])
        if only is not None:
            rows = rows.select([i for i, item in enumerate(rows["source_id"]) if item in only])
        checked += len(rows)
        labels = settings.labels or sorted({lab for row in rows["labels"] for lab in row})
        for start in tqdm(range(0, len(rows), settings.batch_size), desc=f"suspects {split}",
                          unit="batch"):
            batch = [rows[i] for i in range(start, min(start + settings.batch_size, len(rows)))]
            images = [row["image"].convert("RGB") for row in batch]
            predictions = predict_batch(model, processor, images, set(labels), settings.num_beams,
                                        settings.max_new_tokens)
            for row, image, prediction in zip(batch, images, predictions, strict=True):
                truth = truth_boxes(row, labels)
                found = label_suspects(truth, prediction.boxes, prediction.scores,
                                       settings.threshold, settings.class_thresholds)
                counted += found
                if split == "test" or not found:
                    continue  # the test split is only counted
                for entry in found:
                    listed.append({"image_id": row["image_id"], "split": split, **entry})
                boxes, scores = at_or_above(prediction.boxes, prediction.scores,
                                            settings.threshold, settings.class_thresholds)
                written += 1
                name = f"{written:04d}-{file_stem(row['image_id'])}"
                for folder in ("images", "labels", "model"):
                    (out / folder).mkdir(parents=True, exist_ok=True)
                image.save(out / "images" / f"{name}.jpg", quality=95)
                for folder, drawn, verified in (("labels", truth, None), ("model", boxes, False)):
                    (out / folder / f"{name}.xml").write_bytes(labelimg_xml(
                        out / "images" / f"{name}.jpg", image.width, image.height, 3, drawn,
                        verified))
                # The gallery keeps the images with the most suspects (a bounded heap).
                entry = (len(found), -written, row["image_id"], image, truth, boxes, scores)
                (heapq.heappush if len(gallery) < gallery_images else heapq.heappushpop)(
                    gallery, entry)
    if gallery:
        best = sorted(gallery, reverse=True)
        predictions_grid_png([(image, f"{image_id}\n{count} suspect(s)", truth, boxes, scores)
                              for count, _, image_id, image, truth, boxes, scores in best],
                             out / "suspects_gallery.png",
                             title="suspect labels: labels (green), the model (red)")
    result = {"counts": suspect_counts(counted), "listed_counts": suspect_counts(listed),
              "images_checked": checked, "images_listed": written, "suspects": listed,
              "gallery": str(out / "suspects_gallery.png") if gallery else None}
    out.mkdir(parents=True, exist_ok=True)
    (out / "suspects.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return result


@task(name="suspects", cache_policy=NO_CACHE)
def suspects_task(dataset_dir: str, model_dir: str, out_dir: str, settings,
                  only: list[str] | None = None) -> dict:
    """Suspect labels with the model in `model_dir` (with `only`: of those source images); the
    gallery is the run's image artifact `suspect-labels`, the counts a table artifact."""
    from prefect.artifacts import create_image_artifact, create_table_artifact

    from tasks.evaluation.evaluate import png_data_url
    from tasks.training.models import load_finetuned_detector

    processor, model = load_finetuned_detector(model_dir)
    result = find_suspects(dataset_dir, out_dir, model, processor, settings,
                           only=None if only is None else set(only))
    if result["gallery"]:
        create_image_artifact(image_url=png_data_url(result["gallery"]), key="suspect-labels",
                              description="labels the model disagrees with (suspects.json)")
    create_table_artifact(key="suspect-label-counts", description="suspects per kind and class "
                          "(all splits; listed: train and validation)", table=[
                              {"kind": kind, "class": label, "count": count}
                              for kind, per_class in result["counts"].items()
                              for label, count in per_class.items()])
    run_logger().info("suspect labels: " + ", ".join(
        f"{kind} {sum(per_class.values())}" for kind, per_class in result["counts"].items())
        + f" in {result['images_checked']} images; {result['images_listed']} train/validation "
        f"images listed in {out_dir}")
    return result
