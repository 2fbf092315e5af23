"""Evaluate a fine-tuned model on a split: predictions, metrics.json, GT/DT files, PNGs, artifacts."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from tqdm.auto import tqdm

from tasks.core.caching import EVALUATION_LIBRARIES, cache_policy
from tasks.core.config import EvaluateConfig, ModelConfig, TilingConfig
from tasks.core.deadline import Deadline
from tasks.core.logs import run_logger
from tasks.dataset.loading import load_published
from tasks.evaluation.plots import confusion_png, pr_curves_png, predictions_grid_png
from tasks.evaluation.profile import Figures
from tasks.evaluation.review import REVIEW_GALLERY, write_review
from tasks.scoring.coco import CONFUSION_CONFIDENCE, classification_metrics, detection_confusion
from tasks.scoring.score import original_rows, score_detector, truth_boxes
from tasks.scoring.threshold import at_or_above, best_f1_threshold
from tasks.training.classifier import eval_transform, image_label
from tasks.training.models import (
    answer_budget,
    inference_ready,
    load_finetuned_detector,
    model_class_thresholds,
    model_threshold,
    read_model_facts,
)

GRID_IMAGES = 12
# What an evaluation writes that a person reads (the registry keeps them with the version).
EVALUATION_FILES = ("metrics.json", "confusion_matrix.png", "pr_curves.png", "predictions.png",
                    REVIEW_GALLERY)
EVALUATION_PICTURES = tuple(name for name in EVALUATION_FILES if name.endswith(".png"))


def _load(dataset_dir: str | Path, split: str):
    """(the prepared dataset, its `split` without flipped copies)."""
    loaded = load_published(dataset_dir)
    if split not in loaded:
        raise ValueError(f"{dataset_dir} has no {split!r} split (it has {sorted(loaded)})")
    return loaded, original_rows(loaded[split])


def evaluate_detector(dataset_dir: str | Path, model_dir: str | Path, out_dir: str | Path,
                      split: str = "test", labels: list[str] | None = None, num_beams: int = 1,
                      batch_size: int = 8, confidence: float = CONFUSION_CONFIDENCE,
                      tiling: TilingConfig | None = None, deadline: Deadline | None = None) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _, rows = _load(dataset_dir, split)
    labels = labels or sorted({label for row in rows["labels"] for label in row})
    processor, model = load_finetuned_detector(model_dir)
    facts = read_model_facts(model_dir)
    grid: list[tuple] = []
    bar = tqdm(total=len(rows), desc=f"evaluate {split}", unit="img")

    def after_each_batch(batch: list[dict], results: list) -> None:
        """Progress, the time limit, and the first images kept for the predictions picture."""
        bar.update(len(batch))
        if deadline is not None:
            deadline.check()
        for row, result in zip(batch, results, strict=True):
            if len(grid) < GRID_IMAGES:
                grid.append((row["image"], row["image_id"], truth_boxes(row, labels),
                             result.boxes, result.scores))

    scores = score_detector(model, processor, rows, labels, batch_size, num_beams,
                            on_batch=after_each_batch, tiling=tiling,
                            max_new_tokens=answer_budget(facts))
    bar.close()
    truths = [truth[3] for truth in scores.truths]
    threshold = model_threshold(facts)
    review = write_review(out, rows, truths, scores.predictions, labels, threshold,
                          per_class=model_class_thresholds(facts))
    (out / "gt.json").write_text(json.dumps(scores.gt))
    (out / "dt.json").write_text(json.dumps(scores.dt))
    coco = scores.coco
    confusion = detection_confusion(((t[3], p[0], p[1]) for t, p in zip(
        scores.truths, scores.predictions, strict=True)), labels, confidence=confidence)
    metrics = {
        "kind": "florence2", "split": split, "n_images": len(rows),
        "sliced_images": sum(rows["sliced"]) if "sliced" in rows.column_names else 0,
        "coco": ({"map": coco["map"], "map50": coco["map50"], "map75": coco["map75"],
                  "stats": coco["stats"]} if coco else None),
        "per_class": coco["per_class"] if coco else {},
        "confusion_matrix": confusion,
        "parse_failures": scores.parse_failures,
        "truncated_outputs": scores.truncated_outputs,
        "max_new_tokens": scores.max_new_tokens,
        "unknown_labels": len(scores.unknown_labels),
        "unknown_label_examples": sorted(set(scores.unknown_labels))[:10],
        "n_predictions": len(scores.dt),
        "num_beams": num_beams,
        # The threshold the model's validation chose (predict's default) and the best on this split.
        "threshold": threshold,
        "best_f1": best_f1_threshold(truths, scores.predictions),
        "review": {"images": len(review), "folder": "review",
                   "worst": [{k: item[k] for k in ("image_id", "missed", "spurious")}
                             for item in review[:3]]},
    }
    metrics["serving_profile"] = test_set_profile(rows, scores.predictions, threshold,
                                                  model_class_thresholds(facts))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    confusion_png(confusion, out / "confusion_matrix.png",
                  f"detection confusion (IoU>={confusion['iou_threshold']}, "
                  f"conf>={confusion['confidence_threshold']})")
    if coco:
        pr_curves_png(coco["pr_curves"], out / "pr_curves.png")
    predictions_grid_png(grid, out / "predictions.png")
    return metrics


def test_set_profile(rows, predictions: list, threshold: float,
                     per_class: dict[str, float]) -> dict:
    """What the model sees on this split, as a model server sums what it sees (profile.py): the
    reference its served images are compared with."""
    figures = Figures()
    for row, (boxes, scores) in zip(rows, predictions, strict=True):
        kept, kept_scores = at_or_above(boxes, scores, threshold, per_class)
        figures.add_image(row["image"], [box.label for box in kept], kept_scores)
    return {key: value for key, value in figures.summary().items()
            if key not in ("requests", "latency_ms")}


def evaluate_classifier(dataset_dir: str | Path, model_dir: str | Path, out_dir: str | Path,
                        split: str = "test", image_label_mode: str = "majority",
                        negative_label: str = "passed", batch_size: int = 16,
                        deadline: Deadline | None = None) -> dict:
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _, rows = _load(dataset_dir, split)
    model = inference_ready(AutoModelForImageClassification.from_pretrained(model_dir))
    weights = next(model.parameters())
    processor = AutoImageProcessor.from_pretrained(model_dir)
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    transform = eval_transform(processor)
    truth, predicted = [], []
    for start in range(0, len(rows), batch_size):
        batch = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        pixels = torch.stack([transform(row["image"].convert("RGB")) for row in batch])
        with torch.no_grad():
            logits = model(pixel_values=pixels.to(weights.device, dtype=weights.dtype)).logits
        predicted += [labels[i] for i in logits.argmax(-1).tolist()]
        truth += [image_label(row["labels"], image_label_mode, negative_label) for row in batch]
        if deadline is not None:
            deadline.check()
    metrics = {"kind": "vit", "split": split,
               **classification_metrics(truth, predicted, sorted(set(labels) | set(truth)))}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    confusion_png(metrics["confusion_matrix"], out / "confusion_matrix.png", "classifier confusion")
    return metrics


def metrics_markdown(metrics: dict) -> str:
    """The metrics table and the confusion matrix as markdown, for the Prefect UI."""
    lines = [f"# Evaluation on `{metrics['split']}` ({metrics['n_images']} images)", ""]
    if metrics["kind"] == "vit":
        lines += [f"accuracy: **{metrics['accuracy']:.3f}**", "",
                  "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
                  for k, v in metrics["per_class"].items()]
    else:
        coco = metrics["coco"] or {"map": float("nan"), "map50": float("nan"), "map75": float("nan")}
        lines += [f"mAP **{coco['map']:.3f}**, mAP50 **{coco['map50']:.3f}**, mAP75 {coco['map75']:.3f};"
                  f" parse failures {metrics['parse_failures']}, truncated outputs "
                  f"{metrics.get('truncated_outputs', 0)}, unknown labels "
                  f"{metrics['unknown_labels']}", "", "| class | AP | AP50 |", "|---|---|---|"]
        lines += [f"| {k} | {v['ap']:.3f} | {v['ap50']:.3f} |" for k, v in metrics["per_class"].items()]
    confusion = metrics["confusion_matrix"]
    names = confusion["labels"]
    lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "",
              "| true \\ predicted | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |"
              for name, row in zip(names, confusion["matrix"], strict=True)]
    return "\n".join(lines)


def metrics_line(metrics: dict) -> str:
    """One line of the run log: the headline numbers and what went wrong in generation."""
    where = f"on {metrics['n_images']} {metrics['split']} images"
    if metrics["kind"] == "vit":
        return f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f} {where}"
    coco = metrics["coco"] or {}
    return (f"map50 {coco.get('map50', float('nan')):.4f}, map {coco.get('map', float('nan')):.4f} "
            f"{where}; parse failures {metrics['parse_failures']}, truncated outputs "
            f"{metrics.get('truncated_outputs', 0)}, unknown labels {metrics['unknown_labels']}")


def metrics_table(metrics: dict) -> list[dict]:
    if metrics["kind"] == "vit":
        return [{"class": k, **v} for k, v in metrics["per_class"].items()]
    return [{"class": k, "AP": round(v["ap"], 4), "AP50": round(v["ap50"], 4)}
            for k, v in metrics["per_class"].items()]


def evaluate_step(model: ModelConfig, dataset_dir: str | Path, model_dir: str | Path,
                  out_dir: str | Path, split: str = "test", labels: list[str] | None = None,
                  num_beams: int = 1, batch_size: int = 8, tiling: TilingConfig | None = None,
                  timeout_minutes: float | None = None) -> dict:
    """Evaluate a detector or a classifier (`model.kind`) on one split of a prepared dataset; a
    classifier's true class per image follows the config's `image_label` / `negative_label`; a
    detector scores dense test images through the tiles `tiling` describes. Past
    `timeout_minutes` (loading included) it raises StepTimedOut at the next batch."""
    deadline = Deadline("evaluation", timeout_minutes, "evaluate.timeout_minutes") \
        if timeout_minutes is not None else None
    if model.kind == "vit":
        return evaluate_classifier(dataset_dir, model_dir, out_dir, split, model.image_label,
                                   model.negative_label, batch_size, deadline)
    return evaluate_detector(dataset_dir, model_dir, out_dir, split, labels, num_beams, batch_size,
                             tiling=tiling, deadline=deadline)


# The time limit is not part of the cache key: a result is as good whatever the limit was.
@task(name="evaluate", cache_policy=cache_policy(EVALUATION_LIBRARIES, ignore=("timeout_minutes",)),
      persist_result=True)
def evaluate_task(model: ModelConfig, dataset_dir: str, fingerprint: str, model_dir: str,
                  model_hash: str, out_dir: str, split: str = "test", labels: list[str] | None = None,
                  num_beams: int = 1, batch_size: int = 8, tiling: TilingConfig | None = None,
                  timeout_minutes: float | None = None) -> dict:
    """Cached on the dataset fingerprint and the model's hash."""
    return evaluate_step(model, dataset_dir, model_dir, out_dir, split, labels, num_beams,
                         batch_size, tiling, timeout_minutes)


def evaluate_task_for(out_dir: str | Path, config: EvaluateConfig):
    """The evaluate task, cached like every step but run again when its files are gone, and
    failing as TimedOut after `evaluate.timeout_minutes` (pass it as `timeout_minutes` too:
    the step's own check between batches is what stops it reliably, see core/deadline.py)."""
    return evaluate_task.with_options(refresh_cache=not (Path(out_dir) / "metrics.json").is_file(),
                                      timeout_seconds=config.timeout_minutes * 60)


def png_data_url(path: str | Path, max_side: int = 1000) -> str:
    """The picture as a `data:` URL (the Prefect UI shows image artifacts by URL, and a local
    file has none a browser may open), shrunk to `max_side` px so the run's record stays small."""
    import base64
    import io

    from PIL import Image

    with Image.open(path) as image:
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@task(name="evaluation-artifacts")
def evaluation_artifacts_task(metrics: dict, role: str, pictures: list[str] = ()) -> None:
    """The metrics table and the confusion matrix in the Prefect UI, under keys of their own per
    role (`challenger-metrics`, `champion-evaluation`, ...), and each PNG of `pictures` as an
    image artifact (`challenger-confusion-matrix`, ...). Never cached: a Cached evaluation
    still shows its numbers on tonight's run."""
    from prefect.artifacts import (
        create_image_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    run_logger().info(f"{role}: " + metrics_line(metrics))
    for picture in map(Path, pictures):
        if picture.is_file():
            create_image_artifact(image_url=png_data_url(picture),
                                  key=f"{role}-{picture.stem.replace('_', '-')}",
                                  description=f"{role}: {picture.stem.replace('_', ' ')}")

    create_table_artifact(key=f"{role}-metrics", table=metrics_table(metrics),
                          description=f"{role}: per-class metrics on {metrics['split']}")
    create_markdown_artifact(key=f"{role}-evaluation", markdown=metrics_markdown(metrics),
                             description=f"{role}: metrics and confusion matrix")
