"""Which confidence makes a box an answer: matched predictions, and the threshold with the best
F1 on a labelled split (what `predict`, pre-labels and the review set use by default).

A model's confidences are its own scale: a small model that places boxes right may still give
them 0.03 (flat token distributions), a big one 0.9. A fixed 0.25 would then drop every box of
the first; the threshold that best trades missed against spurious boxes on validation images is
the model's own.
"""

from __future__ import annotations

from tasks.core.records import Box
from tasks.scoring.coco import IOU_MATCH, iou


def matched(truth: list[Box], predicted: list[Box], scores: list[float],
            iou_threshold: float = IOU_MATCH) -> list[tuple[float, bool]]:
    """(score, matched) per prediction: most confident first, each takes the unmatched true box
    of its class it overlaps most (IoU >= 0.5). The order makes this the same for every
    confidence threshold: a prediction only competes with more confident ones."""
    return [(score, hit) for score, hit, _ in matched_with_labels(truth, predicted, scores,
                                                                  iou_threshold)]


def matched_with_labels(truth: list[Box], predicted: list[Box], scores: list[float],
                        iou_threshold: float = IOU_MATCH) -> list[tuple[float, bool, str]]:
    """`matched`, with each prediction's class."""
    taken = [False] * len(truth)
    result = []
    for score, box in sorted(zip(scores, predicted, strict=True), key=lambda pair: -pair[0]):
        best, best_iou = None, iou_threshold
        for j, true_box in enumerate(truth):
            overlap = iou(box, true_box)
            if not taken[j] and true_box.label == box.label and overlap >= best_iou:
                best, best_iou = j, overlap
        if best is not None:
            taken[best] = True
        result.append((score, best is not None, box.label))
    return result


def at_or_above(boxes: list[Box], scores: list[float], threshold: float,
                per_class: dict[str, float] | None = None) -> tuple[list[Box], list[float]]:
    """The boxes (and their scores) that count as answers at `threshold`, or at their class's
    own threshold in `per_class`."""
    per_class = per_class or {}
    pairs = [(b, s) for b, s in zip(boxes, scores, strict=True)
             if s >= per_class.get(b.label, threshold)]
    return [b for b, _ in pairs], [s for _, s in pairs]


def missed_and_spurious(truth: list[Box], predicted: list[Box], scores: list[float],
                        threshold: float, per_class: dict[str, float] | None = None) -> tuple[int, int]:
    """(true boxes no prediction at or above `threshold` (its class's in `per_class`) matched,
    such predictions matching none): a box of the wrong class counts once in each."""
    per_class = per_class or {}
    kept = [hit for score, hit, label in matched_with_labels(truth, predicted, scores)
            if score >= per_class.get(label, threshold)]
    return len(truth) - sum(kept), kept.count(False)


def best_f1_threshold(truths: list[list[Box]],
                      predictions: list[tuple[list[Box], list[float]]]) -> dict | None:
    """The confidence threshold with the highest F1 over these images (ties: the lower one),
    with its precision and recall; None without true boxes or predictions, or when no
    prediction is ever right (F1 0 at every threshold: the tie would go to the lowest score,
    a threshold that keeps every box)."""
    total = sum(len(truth) for truth in truths)
    outcomes = sorted((pair for truth, (boxes, scores) in zip(truths, predictions, strict=True)
                       for pair in matched(truth, boxes, scores)), key=lambda pair: -pair[0])
    if not total or not outcomes:
        return None
    best = None
    hits = 0
    for rank, (score, hit) in enumerate(outcomes, start=1):
        hits += hit
        if rank < len(outcomes) and outcomes[rank][0] == score:
            continue  # a threshold keeps all boxes of one score or none
        precision, recall = hits / rank, hits / total
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        if best is None or f1 >= best["f1"]:
            best = {"threshold": score, "f1": f1, "precision": precision, "recall": recall}
    return best if best is not None and best["f1"] > 0 else None


# A class gets a threshold of its own only from this many of its boxes on the selection images;
# below that one image more or less would move it, and the global threshold stands in.
MIN_CLASS_BOXES = 5


def best_f1_thresholds_per_class(truths: list[list[Box]],
                                 predictions: list[tuple[list[Box], list[float]]],
                                 min_boxes: int | None = None) -> dict[str, dict]:
    """Per class with at least `min_boxes` (default MIN_CLASS_BOXES) true boxes:
    `best_f1_threshold` on its boxes and predictions alone (matching is within a class, so the
    outcomes are the same ones). A class none of whose predictions is right gets none."""
    min_boxes = MIN_CLASS_BOXES if min_boxes is None else min_boxes
    counts: dict[str, int] = {}
    for truth in truths:
        for box in truth:
            counts[box.label] = counts.get(box.label, 0) + 1
    chosen = {}
    for label in sorted(label for label, count in counts.items() if count >= min_boxes):
        only = [[box for box in truth if box.label == label] for truth in truths]
        mine = []
        for boxes, scores in predictions:
            keep = [i for i, box in enumerate(boxes) if box.label == label]
            mine.append(([boxes[i] for i in keep], [scores[i] for i in keep]))
        best = best_f1_threshold(only, mine)
        if best is not None:
            chosen[label] = best
    return chosen


def selection_thresholds(truths: list[list[Box]],
                         predictions: list[tuple[list[Box], list[float]]],
                         default: float) -> dict:
    """What a model keeps as its thresholds (its `defectflow.json`): the global best-F1 one and
    each class's own, and where each came from: `source` is "best_f1", or "default" (`default`)
    when no prediction on these images was right; `fell_back` names the classes with enough
    boxes whose own F1 was 0 at every threshold (they take the global one)."""
    best = best_f1_threshold(truths, predictions)
    per_class = best_f1_thresholds_per_class(truths, predictions)
    counts: dict[str, int] = {}
    for truth in truths:
        for box in truth:
            counts[box.label] = counts.get(box.label, 0) + 1
    fell_back = sorted(label for label, count in counts.items()
                       if count >= MIN_CLASS_BOXES and label not in per_class)
    chosen = best or {"threshold": default, "f1": 0.0, "precision": None, "recall": None}
    return {**chosen, "source": "best_f1" if best else "default",
            "per_class": {label: value["threshold"] for label, value in per_class.items()},
            "fell_back": fell_back}
