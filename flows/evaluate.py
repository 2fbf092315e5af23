"""evaluate = fingerprint the dataset and the model -> predict, score, plot (cached)."""

from __future__ import annotations

from prefect import flow

from tasks.cache import folder_hash
from tasks.config import load_config
from tasks.evaluate_model import evaluate_task
from tasks.finetune import dataset_fingerprint_of


@flow(name="evaluate", log_prints=True)
def evaluate(config_path: str, dataset_dir: str, model_dir: str, out_dir: str,
             split: str = "test", num_beams: int = 1) -> dict:
    """COCO mAP, per-class AP, confusion matrix and plots for a fine-tuned model."""
    config = load_config(config_path)
    return evaluate_task(config.model.kind, dataset_dir, dataset_fingerprint_of(dataset_dir),
                         model_dir, folder_hash(model_dir), out_dir, split, config.labels,
                         num_beams)
