"""COCO mAP (faster-coco-eval, which reproduces pycocotools' numbers) and confusion matrices.

COCO conventions: image and annotation ids start at 1, `area = w * h`, boxes `[x, y, w, h]`,
the 12 numbers in `COCOeval.stats` order, per-class AP from the evaluator's precision array.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tasks.core.records import Box

STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
IOU_MATCH = 0.5
# Predictions under this confidence do not enter the confusion matrix (mAP uses every box).
# Every box a greedy `<OD>` generation writes is an answer the model chose to give, so all of
# them count (0.1 once showed a 0.98 mAP50 detector missing every defect).
CONFUSION_CONFIDENCE = 0.0
BACKGROUND = "background"


class CocoInputError(ValueError):
    """GT/DT files that a COCO evaluation cannot use; the message names the problem."""


def coco_ground_truth(images: Iterable[tuple[str, int, int, list[Box]]], labels: list[str]) -> dict:
    """(file name, width, height, boxes) per image -> COCO GT with ids from 1 and area = w*h."""
    categories = [{"id": i + 1, "name": label} for i, label in enumerate(labels)]
    category_ids = {label: i + 1 for i, label in enumerate(labels)}
    coco = {"info": {"description": "defectflow ground truth"}, "images": [], "annotations": [],
            "categories": categories}
    for image_id, (name, width, height, boxes) in enumerate(images, start=1):
        coco["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        for box in boxes:
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id,
                "category_id": category_ids[box.label],
                "bbox": [box.x1, box.y1, box.width, box.height],
                "area": box.width * box.height, "iscrowd": 0,
            })
    return coco


def coco_detections(predictions: Iterable[tuple[int, list[Box], list[float]]],
                    labels: list[str]) -> list[dict]:
    category_ids = {label: i + 1 for i, label in enumerate(labels)}
    return [{"image_id": image_id, "category_id": category_ids[box.label],
             "bbox": [box.x1, box.y1, box.width, box.height], "score": float(score)}
            for image_id, boxes, scores in predictions
            for box, score in zip(boxes, scores, strict=True)]


def check_coco_ids(gt: dict, dt: list[dict]) -> None:
    """Refuse what evaluators silently mishandle: ids of mixed types, detections of unknown images."""
    image_ids = [image.get("id") for image in gt.get("images", [])]
    kinds = {type(i).__name__ for i in image_ids} | {
        type(a.get("image_id")).__name__ for a in gt.get("annotations", [])}
    if len(kinds) > 1:
        example = next(((i, type(i).__name__) for i in image_ids if isinstance(i, str)), None)
        raise CocoInputError(
            "image ids mix " + " and ".join(sorted(kinds)) + " types"
            + (f" (e.g. images id {example[0]!r} is a {example[1]})" if example else "")
            + "; make every image_id the same type in GT and detections")
    known = {str(i) for i in image_ids}
    unknown = sorted({str(d.get("image_id")) for d in dt} - known)
    if unknown:
        raise CocoInputError(f"detections refer to image ids not in the ground truth: {unknown[:5]}")
    if dt and {type(d.get("image_id")).__name__ for d in dt} != kinds:
        raise CocoInputError("detection image_ids are not the same type as the ground truth's")


def coco_evaluate(gt: dict, dt: list[dict], iou_type: str = "bbox", max_dets: int = 100) -> dict:
    """The 12 COCOeval stats, named, plus per-class AP and AP50 (-1 where a class has no GT).
    `max_dets`: detections per image the AP counts (COCO's 100 would cap the recall of a PCB
    image with 300 defects at a third; `dense_max_dets` sizes it from the ground truth)."""
    from faster_coco_eval import COCO
    from faster_coco_eval import COCOeval_faster as COCOeval

    check_coco_ids(gt, dt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt)
        coco_dt = coco_gt.loadRes(dt) if dt else COCO()
        if not dt:  # an empty result set: every AP is 0 where there is ground truth
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"],
                               "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats[:12]]
    precision = evaluator.eval["precision"]  # [iou, recall, class, area, max_dets]
    per_class = {}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    for k, category_id in enumerate(evaluator.params.catIds):
        curve = precision[:, :, k, 0, -1]
        valid = curve[curve > -1]
        at50 = precision[0, :, k, 0, -1]
        per_class[names[int(category_id)]] = {
            "ap": float(valid.mean()) if valid.size else -1.0,
            "ap50": float(at50[at50 > -1].mean()) if (at50 > -1).any() else -1.0,
        }
    return {"stats": stats, **dict(zip(STAT_NAMES, stats, strict=True)), "per_class": per_class,
            "pr_curves": {names[int(c)]: precision[0, :, k, 0, -1].tolist()
                          for k, c in enumerate(evaluator.params.catIds)}}


def dense_max_dets(gt: dict) -> int:
    """COCO's 100 detections per image, or the densest image's box count where that is more."""
    per_image = Counter(annotation["image_id"] for annotation in gt["annotations"])
    return max(100, *per_image.values()) if per_image else 100


def coco_eval_files(gt_path: str | Path, dt_path: str | Path, iou_type: str = "bbox") -> list[float]:
    """`defectflow coco-eval`: the 12 stats for two files, as pycocotools users know them."""
    try:
        gt = json.loads(Path(gt_path).read_text())
        dt = json.loads(Path(dt_path).read_text())
    except (OSError, ValueError) as exc:
        raise CocoInputError(f"cannot read GT/DT: {exc}") from None
    if isinstance(dt, dict) and "annotations" in dt:
        dt = dt["annotations"]
    if not isinstance(gt, dict) or not isinstance(dt, list):
        raise CocoInputError("GT must be a COCO dataset object and DT a list of detections")
    if iou_type == "segm":
        # COCO's loadRes fills bbox/area from segmentations only when no bbox is given.
        dt = [{k: v for k, v in d.items() if k != "bbox"} if "segmentation" in d else d for d in dt]
    return coco_evaluate(gt, dt, iou_type)["stats"]


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union > 0 else 0.0


def detection_confusion(pairs: Iterable[tuple[list[Box], list[Box], list[float]]], labels: list[str],
                        confidence: float = CONFUSION_CONFIDENCE, iou_threshold: float = IOU_MATCH
                        ) -> dict:
    """Rows = true class + background, columns = predicted class + background.

    Per image, predictions with score >= `confidence` are taken in descending score and each is
    matched to the unmatched true box (of any class) it overlaps most, if IoU >= `iou_threshold`:
    that counts in [true class, predicted class]. An unmatched prediction counts in
    [background, predicted class]; a missed true box in [true class, background]."""
    names = [*labels, BACKGROUND]
    index = {label: i for i, label in enumerate(names)}
    matrix = np.zeros((len(names), len(names)), dtype=int)
    for truth, predicted, scores in pairs:
        taken = [False] * len(truth)
        ranked = sorted(((s, p) for p, s in zip(predicted, scores, strict=True) if s >= confidence),
                        key=lambda item: -item[0])
        for _, prediction in ranked:
            best, best_iou = None, iou_threshold
            for j, true_box in enumerate(truth):
                overlap = iou(prediction, true_box)
                if not taken[j] and overlap >= best_iou:
                    best, best_iou = j, overlap
            if best is None:
                matrix[index[BACKGROUND], index[prediction.label]] += 1
            else:
                taken[best] = True
                matrix[index[truth[best].label], index[prediction.label]] += 1
        for j, true_box in enumerate(truth):
            if not taken[j]:
                matrix[index[true_box.label], index[BACKGROUND]] += 1
    return {"labels": names, "matrix": matrix.tolist(), "confidence_threshold": confidence,
            "iou_threshold": iou_threshold,
            "rows": "true class (+ background: predictions matching no true box)",
            "columns": "predicted class (+ background: true boxes nothing matched)"}


def classification_metrics(truth: list[str], predicted: list[str], labels: list[str]) -> dict:
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(truth, predicted, strict=True):
        matrix[index[t], index[p]] += 1
    per_class = {}
    for i, label in enumerate(labels):
        tp = matrix[i, i]
        precision = tp / matrix[:, i].sum() if matrix[:, i].sum() else 0.0
        recall = tp / matrix[i, :].sum() if matrix[i, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                            "support": int(matrix[i, :].sum())}
    # Macro-F1 over the classes that occur (in truth or prediction), as scikit-learn averages:
    # defect sets are imbalanced (mostly `passed`), where accuracy flatters a lazy model.
    present = [label for i, label in enumerate(labels) if matrix[i, :].sum() or matrix[:, i].sum()]
    macro_f1 = float(np.mean([per_class[label]["f1"] for label in present])) if present else 0.0
    return {"accuracy": float(np.trace(matrix) / max(1, matrix.sum())), "macro_f1": macro_f1,
            "per_class": per_class,
            "confusion_matrix": {"labels": labels, "matrix": matrix.tolist(),
                                 "rows": "true class", "columns": "predicted class"},
            "n_images": len(truth)}
