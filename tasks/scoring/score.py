"""Score a detector on rows of a prepared dataset: generate, parse, COCO mAP. One function, used
by training (to choose checkpoints and stop) and by evaluation (the numbers the registry keeps),
so a checkpoint is chosen by exactly the number it will be judged by."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tasks.core.config import TilingConfig
from tasks.core.records import Box
from tasks.scoring.coco import coco_detections, coco_evaluate, coco_ground_truth, dense_max_dets
from tasks.scoring.generation import new_token_budget, predict_batch, predict_sliced


def original_rows(split):
    """A split of the prepared dataset without its flipped copies (an index, no lambda: `datasets`
    would fingerprint a lambda by disassembling it)."""
    keep = [i for i, augmentation in enumerate(split["augmentation"]) if augmentation == "none"]
    return split.select(keep)


def truth_boxes(row: dict, labels: Sequence[str]) -> list[Box]:
    return [Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3], label=label)
            for b, label in zip(row["boxes"], row["labels"], strict=True) if label in labels]


@dataclass
class DetectionScores:
    labels: list[str]
    truths: list[tuple[str, int, int, list[Box]]] = field(default_factory=list)
    predictions: list[tuple[list[Box], list[float]]] = field(default_factory=list)
    parse_failures: int = 0
    truncated_outputs: int = 0
    max_new_tokens: int = 0
    unknown_labels: list[str] = field(default_factory=list)
    gt: dict = field(default_factory=dict)
    dt: list[dict] = field(default_factory=list)
    coco: dict | None = None  # coco_evaluate's result; None when there is no ground truth box

    @property
    def map50(self) -> float:
        return self.coco["map50"] if self.coco else 0.0


def score_detector(model, processor, rows, labels: Sequence[str], batch_size: int = 8,
                   num_beams: int = 1, on_batch: Callable[[list[dict], list], None] | None = None,
                   max_new_tokens: int | None = None,
                   tiling: TilingConfig | None = None) -> DetectionScores:
    """Predict every row (batched), then COCO mAP against the rows' boxes. `on_batch(rows,
    predictions)` sees each batch (the evaluation keeps a few images for its picture).
    `max_new_tokens` defaults to the rows' longest target and a quarter more. A row marked
    `sliced` (a test image too dense for one target) is predicted through `tiling`'s tiles."""
    return with_coco(predicted_rows(model, processor, rows, labels, batch_size, num_beams,
                                    on_batch, max_new_tokens, tiling))


def predicted_rows(model, processor, rows, labels: Sequence[str], batch_size: int = 8,
                   num_beams: int = 1,
                   on_batch: Callable[[list[dict], list], None] | None = None,
                   max_new_tokens: int | None = None,
                   tiling: TilingConfig | None = None) -> DetectionScores:
    """`score_detector`'s predictions and truths, without the COCO metrics (`with_coco` adds
    them; a part of the rows scored apart is scored once it is whole again)."""
    scores = DetectionScores(labels=list(labels))
    if max_new_tokens is None:
        max_new_tokens = new_token_budget(rows["target"], processor.tokenizer)
    scores.max_new_tokens = max_new_tokens
    for start in range(0, len(rows), batch_size):
        batch = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        if tiling is None and any(row.get("sliced") for row in batch):
            raise ValueError("the dataset has test images to score through tiles: "
                             "give the config's `tiling`")
        plain = [row["image"] for row in batch if not row.get("sliced")]
        whole = iter(predict_batch(model, processor, plain, set(labels), num_beams=num_beams,
                                   max_new_tokens=max_new_tokens) if plain else [])
        results = [predict_sliced(model, processor, row["image"], set(labels), tiling.size,
                                  tiling.overlap, num_beams, max_new_tokens, batch_size)
                   if row.get("sliced") else next(whole) for row in batch]
        for row, result in zip(batch, results, strict=True):
            scores.truths.append((row["image_id"], row["width"], row["height"],
                                  truth_boxes(row, labels)))
            scores.predictions.append((result.boxes, result.scores))
            scores.parse_failures += result.parse_failures
            scores.truncated_outputs += result.truncated
            scores.unknown_labels += result.unknown_labels
        if on_batch is not None:
            on_batch(batch, results)
    return scores


def with_coco(scores: DetectionScores) -> DetectionScores:
    """The COCO ground truth, detections and metrics of the predictions made."""
    scores.gt = coco_ground_truth(scores.truths, scores.labels)
    scores.dt = coco_detections(((i + 1, boxes, confidences) for i, (boxes, confidences)
                                 in enumerate(scores.predictions)), scores.labels)
    scores.coco = (coco_evaluate(scores.gt, scores.dt, max_dets=dense_max_dets(scores.gt))
                   if scores.gt["annotations"] else None)
    return scores


def interleaved(parts: Sequence[DetectionScores]) -> DetectionScores:
    """The scores of rows split over processes as `rows[rank::len(parts)]`, in the rows' own
    order again, with COCO recomputed: the metrics one process scoring every row would give."""
    whole = DetectionScores(labels=list(parts[0].labels), max_new_tokens=parts[0].max_new_tokens)
    for k in range(max(len(part.truths) for part in parts)):
        for part in parts:
            if k < len(part.truths):
                whole.truths.append(part.truths[k])
                whole.predictions.append(part.predictions[k])
    for part in parts:
        whole.parse_failures += part.parse_failures
        whole.truncated_outputs += part.truncated_outputs
        whole.unknown_labels += part.unknown_labels
    return with_coco(whole)
