"""evaluate = fingerprint the dataset and the model -> predict, score, plot (cached)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks.core.caching import folder_hash
from tasks.core.config import load_config
from tasks.dataset.publish import dataset_fingerprint_of
from tasks.evaluation.evaluate import (
    EVALUATION_PICTURES,
    evaluate_task_for,
    evaluation_artifacts_task,
)


@flow(name="evaluate", log_prints=True)
def evaluate(config_path: str, dataset_dir: str, model_dir: str, out_dir: str,
             split: str = "test", num_beams: int | None = None) -> dict:
    """COCO mAP, per-class AP, confusion matrix and plots for a fine-tuned model."""
    config = load_config(config_path)
    metrics = evaluate_task_for(out_dir, config.evaluate)(
        model=config.model, dataset_dir=dataset_dir, fingerprint=dataset_fingerprint_of(dataset_dir),
        model_dir=model_dir, model_hash=folder_hash(model_dir), out_dir=out_dir, split=split,
        labels=config.labels, num_beams=num_beams or config.evaluate.num_beams,
        batch_size=config.evaluate.batch_size, tiling=config.tiling,
        timeout_minutes=config.evaluate.timeout_minutes)
    evaluation_artifacts_task(metrics=metrics, role="model", pictures=[
        str(Path(out_dir) / name) for name in EVALUATION_PICTURES])
    return metrics
