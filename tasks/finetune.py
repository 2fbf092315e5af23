"""Fine-tuning Florence-2 for `<OD>` with the HF Trainer (+ peft LoRA), resumable, early-stopping.

One readable path, as in transformers' examples: load the prepared dataset, load the model,
wrap it with LoRA, train with checkpoints every `eval_steps`, resume from the last checkpoint
when the step is retried after a crash, keep the best checkpoint by validation loss, save the
adapter + processor (and optionally the merged model) where `from_pretrained` finds them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

from prefect import get_run_logger, task

from tasks.cache import CACHE_POLICY
from tasks.config import ModelConfig, TrainConfig
from tasks.loc_tokens import OD_PROMPT

log = logging.getLogger(__name__)
# Fault hooks for the tests only: kill the process, or raise, right after a checkpoint is saved.
FAULT_ENV = "DEFECTFLOW_TEST_KILL_AFTER_STEP"
FAIL_ENV = "DEFECTFLOW_TEST_FAIL_AFTER_STEP"
HIGH_LR = {"florence2": 1e-4, "vit": 1e-3}


def lr_warning(model: ModelConfig, train: TrainConfig) -> str | None:
    if model.checkpoint != "tiny" and train.lr > HIGH_LR[model.kind]:
        return (f"lr {train.lr:g} is high for fine-tuning a pretrained {model.kind} "
                f"(recipes use {'1e-5..5e-6' if model.kind == 'florence2' else '2e-5..5e-5'}); "
                "the loss may diverge")
    return None


def start_run(dataset_dir: str | Path, out_dir: str | Path, train_config: TrainConfig):
    """(output folder, train split, validation split), with the seed set."""
    from transformers import set_seed

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(train_config.seed)
    return (out, *load_splits(dataset_dir))


def load_splits(dataset_dir: str | Path):
    """The prepared dataset's splits; validation falls back to test (and then to train) when the
    dataset is too small to have one, so early stopping always has something to look at."""
    import datasets

    loaded = datasets.load_dataset(str(dataset_dir))
    if "train" not in loaded:
        raise ValueError(f"{dataset_dir} has no train split: nothing to train on")
    validation = loaded.get("validation") or loaded.get("test") or loaded["train"]
    return loaded["train"], validation


class DetectionCollator:
    """Rows -> model inputs: `<OD>` prompts and PIL images through the processor, the target text
    as labels with padding masked to -100 (so padding costs no loss)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, rows: list[dict]) -> dict:
        images = [row["image"].convert("RGB") for row in rows]
        inputs = self.processor(text=[OD_PROMPT] * len(rows), images=images, return_tensors="pt",
                                padding=True)
        labels = self.processor.tokenizer([row["target"] for row in rows], return_tensors="pt",
                                          padding=True, return_token_type_ids=False).input_ids
        labels[labels == self.processor.tokenizer.pad_token_id] = -100
        inputs["labels"] = labels
        return dict(inputs)


def precision_flags(precision: str) -> dict:
    """bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU."""
    import torch

    if precision == "fp32" or not torch.cuda.is_available():
        return {}
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return {"bf16": True}
    return {"fp16": True}


def wrap_with_lora(model, config: ModelConfig):
    from peft import LoraConfig, get_peft_model

    if config.lora is None:
        peft_model = model
    else:
        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                          lora_dropout=config.lora.dropout,
                          target_modules=list(config.lora.target_modules), bias="none")
        peft_model = get_peft_model(model, lora)
    if config.freeze_vision:
        for name, param in peft_model.named_parameters():
            if "vision_tower" in name:
                param.requires_grad = False
    return peft_model


def last_checkpoint(output_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def _fault_callback():
    """Only when the tests ask for it: kill this process, or raise, right after a save."""
    from transformers import TrainerCallback

    kill_at = int(os.environ.get(FAULT_ENV, "0") or 0)
    fail_at = int(os.environ.get(FAIL_ENV, "0") or 0)

    class FaultAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if kill_at and state.global_step >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if fail_at and state.global_step >= fail_at:
                raise RuntimeError(f"injected training failure after step {state.global_step}")

    return [FaultAfterSave()] if kill_at or fail_at else []


def training_arguments(out: Path, train: TrainConfig, max_steps: int | None, **extra):
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=train.epochs,
        max_steps=max_steps if max_steps is not None else train.max_steps,
        learning_rate=train.lr,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_ratio,  # a float < 1 is a ratio of the total steps (transformers 5)
        seed=train.seed,
        eval_strategy="steps",
        eval_steps=train.eval_steps,
        save_strategy="steps",
        save_steps=train.eval_steps,
        save_total_limit=train.save_total_limit,
        load_best_model_at_end=True,
        logging_steps=max(1, min(10, train.eval_steps)),
        remove_unused_columns=False,
        report_to=[],
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
        **precision_flags(train.precision),
        **extra,
    )


def save_checkpoints_in_model_format(model) -> None:
    """Work around transformers issue #48805: the Trainer reloads checkpoints (resume, best model)
    with a plain load_state_dict, but save_pretrained writes renamed legacy keys for models whose
    weights were renamed in v5 (ViT among them), so the reload silently misses every weight.
    Saving in the model's own key format makes both reloads exact; from_pretrained reads it too."""
    from functools import partial

    model.save_pretrained = partial(model.save_pretrained, save_original_format=False)


def run_trainer(model, args, train_set, eval_set, collator, patience: int, out: Path,
                compute_metrics=None) -> dict:
    """Train (resuming from the last checkpoint if one exists), keep the best, write the curve."""
    from transformers import EarlyStoppingCallback, Trainer

    resume = last_checkpoint(args.output_dir)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=collator, compute_metrics=compute_metrics,
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=patience),
                                 *_fault_callback()])
    resumed_step = int(resume.rsplit("-", 1)[-1]) if resume else 0
    if resume:
        log.warning("resuming from %s (global step %d)", resume, resumed_step)
    result = trainer.train(resume_from_checkpoint=resume)
    history = trainer.state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    summary = {
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
        "metric_for_best_model": args.metric_for_best_model,
        "first_train_loss": train_losses[0] if train_losses else None,
        "last_train_loss": train_losses[-1] if train_losses else None,
        "train_runtime_s": result.metrics.get("train_runtime"),
    }
    plot_loss_curve(history, out / "loss_curve.png")
    (out / "log_history.json").write_text(json.dumps(history, indent=1))
    return {"trainer": trainer, **summary}


def plot_loss_curve(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def finetune(dataset_dir: str | Path, out_dir: str | Path, model_config: ModelConfig,
             train_config: TrainConfig, max_steps: int | None = None) -> dict:
    """Fine-tune the configured kind of model; a tiny base model is built inside `out_dir`."""
    if model_config.kind == "vit":
        from tasks.classifier import finetune_classifier

        return finetune_classifier(dataset_dir, out_dir, model_config, train_config,
                                   Path(out_dir) / "tiny-base", max_steps)
    return finetune_detector(dataset_dir, out_dir, model_config, train_config,
                             Path(out_dir) / "tiny-base", max_steps)


def finetune_detector(dataset_dir: str | Path, out_dir: str | Path, model_config: ModelConfig,
                      train_config: TrainConfig, tiny_folder: str | Path,
                      max_steps: int | None = None) -> dict:
    """Fine-tune Florence-2 on a prepared dataset; returns a summary (also in train_summary.json)."""
    from tasks.models import load_detector

    out, train_set, eval_set = start_run(dataset_dir, out_dir, train_config)
    labels = sorted({label for row in train_set["labels"] for label in row})
    processor, model = load_detector(model_config.checkpoint, tiny_folder, labels)
    model = wrap_with_lora(model, model_config)
    args = training_arguments(out, train_config, max_steps)
    summary = run_trainer(model, args, train_set, eval_set, DetectionCollator(processor),
                          train_config.patience, out)
    trainer = summary.pop("trainer")
    model_dir = out / "model"
    trainer.save_model(str(model_dir))  # the best checkpoint: LoRA adapter, or the full model
    processor.save_pretrained(model_dir)
    if model_config.lora is not None and model_config.merge:
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        processor.save_pretrained(out / "merged")
    summary.update({"kind": "florence2", "checkpoint": model_config.checkpoint,
                    "base_model": str(tiny_folder) if model_config.checkpoint == "tiny"
                    else model_config.checkpoint,
                    "lora": model_config.lora is not None, "model_dir": str(model_dir),
                    "train_rows": len(train_set), "eval_rows": len(eval_set)})
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def load_finetuned_detector(model_dir: str | Path):
    """(processor, model) from a folder written by `finetune_detector` (adapter or full model)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = Path(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        base_name = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModelForImageTextToText.from_pretrained(base_name)
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForImageTextToText.from_pretrained(model_dir)
    return processor, model.eval()


def dataset_fingerprint_of(dataset_dir: str | Path) -> str:
    """The fingerprint `prepare` wrote into the dataset card (part of the train cache key)."""
    import re

    card = (Path(dataset_dir) / "README.md").read_text(encoding="utf-8")
    match = re.search(r"Fingerprint: `([0-9a-f]+)`", card)
    if not match:
        raise ValueError(f"{dataset_dir} has no defectflow fingerprint: was it made by `prepare`?")
    return match.group(1)


# Cached on the dataset fingerprint + model/train config + code version; a retry after a crash
# resumes from the last checkpoint in out_dir.
def _worth_retrying(task, task_run, state) -> bool:
    """A crash is retried (and resumes); a checkpoint that cannot be loaded is not."""
    from tasks.models import ModelUnavailable

    try:
        state.result()
    except ModelUnavailable:
        return False
    except Exception:  # noqa: BLE001 - any other failure is worth one more try
        return True
    return True


@task(name="train", cache_policy=CACHE_POLICY, persist_result=True, retries=1,
      retry_condition_fn=_worth_retrying)
def train_task(dataset_dir: str, fingerprint: str, model_config: ModelConfig, train_config: TrainConfig,
               out_dir: str, max_steps: int | None = None) -> dict:
    return finetune(dataset_dir, out_dir, model_config, train_config, max_steps)


@task(name="check-train-config")
def check_train_config_task(model_config: ModelConfig, train_config: TrainConfig) -> list[str]:
    """Warnings about the configured training (before any warm start swaps the checkpoint)."""
    warnings = [w for w in [lr_warning(model_config, train_config)] if w]
    for warning in warnings:
        get_run_logger().warning(warning)
    return warnings


def warm_start_config(model: ModelConfig, train: TrainConfig, champion: dict | None) -> ModelConfig:
    """With `train.warm_start`, tonight's training starts from the champion's weights (a full
    model folder; a LoRA adapter starts again from its base checkpoint)."""
    if not (train.warm_start and champion):
        return model
    folder = Path(champion["model_dir"])
    if not (folder / "config.json").exists():
        get_run_logger().warning("warm start skipped: the champion is an adapter, not a full model")
        return model
    return model.model_copy(update={"checkpoint": str(folder)})
