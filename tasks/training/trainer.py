"""The Trainer plumbing both model kinds share: splits, seed, precision, TrainingArguments,
resume from the last checkpoint, early stopping, the loss curve, and the test-only fault hooks."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tasks.core.config import ModelConfig, TrainConfig
from tasks.core.deadline import Deadline
from tasks.core.forks import forget_prefect_exit_hooks_in_forks
from tasks.core.logs import run_logger
from tasks.dataset.publish import dataset_fingerprint_of
from tasks.training.curves import curves, evaluation_line, plot_training_curves
from tasks.training.run_folder import claim_output, resume_checkpoint, run_identity
from tasks.training.selection import Splits, load_splits, selection_splits

# Fault hooks for the tests only: kill the process, or raise, right after a checkpoint is saved.
FAULT_ENV = "DEFECTFLOW_TEST_KILL_AFTER_STEP"
FAIL_ENV = "DEFECTFLOW_TEST_FAIL_AFTER_STEP"
FAIL_RANK_ENV = "DEFECTFLOW_TEST_FAIL_RANK"  # under torchrun: only this rank raises


def start_run(dataset_dir: str | Path, out_dir: str | Path, model_config: ModelConfig,
              train_config: TrainConfig, max_steps: int | None,
              identity: str | None = None) -> tuple[Path, str, Splits]:
    """(output folder, identity, splits), with the seed set and the output folder claimed for
    this run (see `claim_output`). A flow that already computed the identity (to name the run
    folder) passes it: hashing a base folder again costs a full read."""
    from transformers import set_seed

    out = Path(out_dir)
    identity = identity or run_identity(dataset_fingerprint_of(dataset_dir), model_config,
                                        train_config, max_steps)
    claim_output(out, identity)
    set_seed(train_config.seed)
    train, validation = load_splits(dataset_dir)
    return out, identity, selection_splits(train, validation, train_config.holdout)


def precision_flags(precision: str) -> dict:
    """bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU."""
    import torch

    if precision == "fp32" or not torch.cuda.is_available():
        return {}
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return {"bf16": True}
    return {"fp16": True}


def _fault_callback():
    """Only when the tests ask for it: kill this process, or raise, right after a save.
    `FAIL_ENV=N:path` raises only while `path` exists (a served deployment's runs inherit the
    environment of the process that serves it: the test removes the file to let a retry pass)."""
    from transformers import TrainerCallback

    kill_at = int(os.environ.get(FAULT_ENV, "0") or 0)
    fail_at_text, _, flag = (os.environ.get(FAIL_ENV, "0") or "0").partition(":")
    fail_at = int(fail_at_text) if not flag or Path(flag).exists() else 0
    if os.environ.get(FAIL_RANK_ENV, os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        fail_at = 0

    class FaultAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if kill_at and state.global_step >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if fail_at and state.global_step >= fail_at:
                raise RuntimeError(f"injected training failure after step {state.global_step}")

    return [FaultAfterSave()] if kill_at or fail_at else []


def stop_at(deadline: Deadline):
    """A Trainer callback that ends the run with StepTimedOut once `deadline` has passed: checked
    when training begins (loading counts), after every step and every evaluation batch."""
    from transformers import TrainerCallback

    class StopAtDeadline(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            deadline.check()

        def on_step_end(self, args, state, control, **kwargs):
            deadline.check()

        def on_prediction_step(self, args, state, control, **kwargs):
            deadline.check()

    return StopAtDeadline()


def input_workers(train: TrainConfig) -> int:
    """Processes that prepare batches: the config's number, else (with a GPU to keep fed) all
    cores but one, at most 8; 0 on a CPU-only machine, whose cores train."""
    import os

    import torch

    if train.dataloader_workers is not None:
        return train.dataloader_workers
    return min(8, max(0, (os.cpu_count() or 1) - 1)) if torch.cuda.is_available() else 0


def training_arguments(out: Path, train: TrainConfig, max_steps: int | None, select: str | None,
                       **extra):
    """The Trainer's arguments. `select`: the metric that chooses the best checkpoint on the
    selection set (`loss`, `map50`...), or None when there is no selection set: then nothing is
    evaluated during training and the last checkpoint is kept."""
    import torch
    from transformers import TrainingArguments

    choose = ({"eval_strategy": "steps", "eval_steps": train.eval_steps,
               "load_best_model_at_end": True, "metric_for_best_model": select,
               "greater_is_better": select != "loss"} if select is not None
              else {"eval_strategy": "no", "load_best_model_at_end": False})
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
        lr_scheduler_type=train.lr_scheduler,
        seed=train.seed,
        save_strategy="steps",
        save_steps=train.eval_steps,
        save_total_limit=train.save_total_limit,
        logging_steps=max(1, min(10, train.eval_steps)),
        remove_unused_columns=False,
        report_to=[],
        dataloader_num_workers=(workers := input_workers(train)),
        dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Every trainable weight of both model kinds takes part in each step: DDP need not
        # search the graph for unused ones every step (and warn that it found none).
        **({"ddp_timeout": int(train.distributed.timeout_minutes * 60),
            "ddp_find_unused_parameters": False} if train.distributed else {}),
        # accelerate does DDP over gloo only when told the ranks are CPU processes
        use_cpu=under_torchrun() and not torch.cuda.is_available(),
        disable_tqdm=False,
        **precision_flags(train.precision),
        **choose,
        **extra,
    )


def save_checkpoints_in_model_format(model) -> None:
    """Work around transformers issue #48805: the Trainer reloads checkpoints (resume, best model)
    with a plain load_state_dict, but save_pretrained writes renamed legacy keys for models whose
    weights were renamed in v5 (ViT among them), so the reload silently misses every weight.
    Saving in the model's own key format makes both reloads exact; from_pretrained reads it too."""
    from functools import partial

    model.save_pretrained = partial(model.save_pretrained, save_original_format=False)


def under_torchrun() -> bool:
    """This process is a rank started by torchrun (its launcher sets these)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def quality_callbacks(patience: int, min_steps: int, early_stopping: bool = True):
    """Early stopping that waits for `min_steps` (only where a selection set is evaluated), then
    one line per evaluation in the run log. Callbacks that add metrics (mAP50) must come before
    these."""
    from tqdm.auto import tqdm
    from transformers import EarlyStoppingCallback, TrainerCallback

    class EarlyStoppingAfter(EarlyStoppingCallback):
        def on_evaluate(self, args, state, control, metrics, **kwargs):
            if state.global_step >= min_steps:  # a model that has not learnt yet is not stuck
                super().on_evaluate(args, state, control, metrics, **kwargs)

    launched = under_torchrun()

    class EvaluationLines(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if launched and state.is_world_process_zero:
                run_logger().info(
                    "training on %d processes (DDP, %s): global batch %d x %d%s = %d",
                    args.world_size, args.distributed_state.backend, args.world_size,
                    args.per_device_train_batch_size,
                    f" x {args.gradient_accumulation_steps} accumulated"
                    if args.gradient_accumulation_steps > 1 else "",
                    args.world_size * args.per_device_train_batch_size
                    * args.gradient_accumulation_steps)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not state.is_world_process_zero:
                return  # every rank evaluates; one says so
            line = evaluation_line(state.global_step, metrics or {}, state.log_history)
            run_logger().info(line)  # the run log (Prefect UI); under torchrun, rank 0's stdout
            if not launched:
                tqdm.write(line)  # the console, above the steps bar: one table row per evaluation

    stopping = [EarlyStoppingAfter(early_stopping_patience=patience)] if early_stopping else []
    return [*stopping, EvaluationLines()]


def run_trainer(model, args, train_set, eval_set, collator, train: TrainConfig, out: Path,
                compute_metrics=None, callbacks: tuple = (), normalise=None) -> dict:
    """Train (resuming from the last checkpoint if one exists), keep the best, write the curves.
    `normalise`: the image processor whose normalisation uint8 batches get on the device."""
    from transformers import Trainer
    from transformers.trainer_callback import ProgressCallback

    from tasks.training.pixels import normalise_on_device

    class NormalisingTrainer(Trainer):
        """The Trainer, normalising uint8 pixel batches once they are on the device."""

        def _prepare_inputs(self, inputs):
            inputs = super()._prepare_inputs(inputs)
            if normalise is not None and "pixel_values" in inputs:
                inputs["pixel_values"] = normalise_on_device(inputs["pixel_values"], normalise)
            return inputs

    class StepsBar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass  # the curves and log_history.json keep every number

    forget_prefect_exit_hooks_in_forks()  # its DataLoader workers fork a process running Prefect
    args.device  # noqa: B018 - sets the devices up (under torchrun: the process group)
    resume = resume_checkpoint(args.output_dir)
    trainer = NormalisingTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=collator, compute_metrics=compute_metrics,
                      callbacks=[*callbacks,
                                 *quality_callbacks(train.patience, train.min_steps,
                                                    args.load_best_model_at_end),
                                 *_fault_callback()])
    if not args.disable_tqdm:  # the steps bar, without a raw log dict printed every 10 steps
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(StepsBar())
    resumed_step = int(resume.rsplit("-", 1)[-1]) if resume else 0
    if resume:
        run_logger().warning("resuming from %s (global step %d)", resume, resumed_step)
    result = trainer.train(resume_from_checkpoint=resume)
    history = trainer.state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    selected_by = args.metric_for_best_model
    summary = {
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
        "metric_for_best_model": selected_by,
        "first_train_loss": train_losses[0] if train_losses else None,
        "last_train_loss": train_losses[-1] if train_losses else None,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "world_size": args.world_size,
        "global_batch": args.world_size * args.per_device_train_batch_size
        * args.gradient_accumulation_steps,
        "curves": curves(history),
    }
    if trainer.is_world_process_zero():  # under DDP, rank 0 alone writes the run folder
        plot_training_curves(history, out / "loss_curve.png", selected_by)
        (out / "log_history.json").write_text(json.dumps(history, indent=1))
    return {"trainer": trainer, **summary}
