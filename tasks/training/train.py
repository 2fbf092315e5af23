"""The train step: one entry for both model kinds, its warnings, warm start, and the @task."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task

from tasks.core.caching import TRAINING_LIBRARIES, cache_policy
from tasks.core.config import ModelConfig, TilingConfig, TrainConfig
from tasks.core.deadline import Deadline
from tasks.training.classifier import finetune_classifier
from tasks.training.detector import finetune_detector
from tasks.training.distributed import train_distributed
from tasks.training.models import ModelUnavailable
from tasks.training.pretrain import DONE as PRETRAINING_RECORD
from tasks.training.run_folder import is_trained
from tasks.training.tiny import TINY
from tasks.training.trainer import stop_at, under_torchrun

HIGH_LR = {"florence2": 1e-4, "vit": 1e-3}


def lr_warning(model: ModelConfig, train: TrainConfig) -> str | None:
    """A warning for a learning rate that would wreck a pretrained checkpoint (not for
    defectflow's own toy models: the random `tiny` one and the pretrained tiny base)."""
    toy = model.checkpoint == TINY or (Path(model.checkpoint) / PRETRAINING_RECORD).is_file()
    if not toy and train.lr > HIGH_LR[model.kind]:
        return (f"lr {train.lr:g} is high for fine-tuning a pretrained {model.kind} "
                f"(recipes use {'1e-5..5e-6' if model.kind == 'florence2' else '2e-5..5e-5'}); "
                "the loss may diverge")
    return None


def train_step(dataset_dir: str | Path, out_dir: str | Path, model_config: ModelConfig,
               train_config: TrainConfig, max_steps: int | None = None,
               identity: str | None = None, tiling: TilingConfig | None = None) -> dict:
    """Fine-tune the configured kind of model; a tiny base model is built inside `out_dir`.
    `identity`: the run identity, when the caller computed it already (see `run_identity`);
    `tiling`: how the dataset's tiles were cut (a detector's model folder records it). Past
    `train.timeout_minutes` (loading included) it raises StepTimedOut at the next step."""
    if train_config.distributed is not None and not under_torchrun():
        return train_distributed(dataset_dir, out_dir, model_config, train_config, max_steps,
                                 identity, tiling)  # its ranks come back here, under torchrun
    watch = (stop_at(Deadline("training", train_config.timeout_minutes, "train.timeout_minutes")),)
    if model_config.kind == "vit":
        return finetune_classifier(dataset_dir, out_dir, model_config, train_config,
                                   Path(out_dir) / "tiny-base", max_steps, identity, watch)
    return finetune_detector(dataset_dir, out_dir, model_config, train_config,
                             Path(out_dir) / "tiny-base", max_steps, identity, watch, tiling=tiling)


# Cached on the dataset fingerprint + model/train config + code version; a retry after a crash
# resumes from the last checkpoint in out_dir.
def _worth_retrying(task, task_run, state) -> bool:
    """A crash is retried (and resumes); a checkpoint that cannot be loaded, or a training that
    ran out of time, is not."""
    try:
        state.result()
    except (ModelUnavailable, TimeoutError):
        return False
    except Exception:  # noqa: BLE001 - any other failure is worth one more try
        return True
    return True


@task(name="train", cache_policy=cache_policy(TRAINING_LIBRARIES), persist_result=True, retries=1,
      retry_condition_fn=_worth_retrying)
def train_task(dataset_dir: str, fingerprint: str, model_config: ModelConfig, train_config: TrainConfig,
               out_dir: str, max_steps: int | None = None, identity: str | None = None,
               tiling: TilingConfig | None = None) -> dict:
    return train_step(dataset_dir, out_dir, model_config, train_config, max_steps, identity, tiling)


def train_task_for(out_dir: str | Path, identity: str, train_config: TrainConfig):
    """The train task, cached like every step but run again when its output folder is gone or
    holds another run's model (a cached result must never point at missing or foreign files),
    and failing as TimedOut after `train.timeout_minutes`."""
    return train_task.with_options(refresh_cache=not is_trained(out_dir, identity),
                                   timeout_seconds=train_config.timeout_minutes * 60)


@task(name="check-train-config")
def check_train_config_task(model_config: ModelConfig, train_config: TrainConfig) -> list[str]:
    """Warnings about the configured training (before any warm start swaps the checkpoint)."""
    warnings = [w for w in [lr_warning(model_config, train_config)] if w]
    for warning in warnings:
        get_run_logger().warning(warning)
    return warnings


def warm_start_config(model: ModelConfig, train: TrainConfig, champion: dict | None) -> ModelConfig:
    """With `train.warm_start`, tonight's training starts from the champion: a full model folder
    becomes the checkpoint; a LoRA adapter is trained further on the base it was made for."""
    if not (train.warm_start and champion):
        return model
    folder = Path(champion["model_dir"])
    adapter_config = folder / "adapter_config.json"
    if adapter_config.exists():
        base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        return model.model_copy(update={"checkpoint": base, "adapter": str(folder)})
    return model.model_copy(update={"checkpoint": str(folder)})


def warm_start_train_config(train: TrainConfig, champion: dict | None) -> TrainConfig:
    """A run warm started from the champion trains `warm_start_steps` (when set)."""
    if not (train.warm_start and champion and train.warm_start_steps):
        return train
    return train.model_copy(update={"max_steps": train.warm_start_steps,
                                    "min_steps": min(train.min_steps, train.warm_start_steps)})
