"""train = read the prepared dataset's fingerprint -> check the config -> fine-tune (cached, resumable)."""

from __future__ import annotations

from prefect import flow

from tasks.core.config import load_config
from tasks.dataset.publish import dataset_fingerprint_of
from tasks.training.run_folder import run_identity
from tasks.training.train import check_train_config_task, train_task_for


@flow(name="train", log_prints=True)
def train(config_path: str, dataset_dir: str, out_dir: str, model: str | None = None,
          max_steps: int | None = None) -> dict:
    """Fine-tune Florence-2 (LoRA) or a ViT classifier on a dataset made by `prepare`."""
    config = load_config(config_path)
    model_config = config.model if model is None else config.model.model_copy(
        update={"checkpoint": model})
    check_train_config_task(model_config=model_config, train_config=config.train)
    fingerprint = dataset_fingerprint_of(dataset_dir)
    identity = run_identity(fingerprint, model_config, config.train, max_steps)
    return train_task_for(out_dir, identity, config.train)(
        dataset_dir=dataset_dir, fingerprint=fingerprint, model_config=model_config,
        train_config=config.train, out_dir=out_dir, max_steps=max_steps, identity=identity,
        tiling=config.tiling)
