"""Fine-tuning Florence-2 for `<OD>` with the HF Trainer and a peft LoRA adapter.

One readable path, as in transformers' examples: load the prepared dataset, load the model,
wrap it with LoRA, train with checkpoints every `eval_steps` (resuming from the last one after a
crash), keep the best checkpoint by validation mAP50 (`train.select`), save the adapter +
processor (and optionally the merged model) where `from_pretrained` finds them.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
from transformers import TrainerCallback

from tasks.core.config import ModelConfig, TilingConfig, TrainConfig
from tasks.dataset.loc_tokens import OD_PROMPT
from tasks.scoring.generation import DEFAULT_THRESHOLD, new_token_budget
from tasks.scoring.score import interleaved, original_rows, predicted_rows, score_detector
from tasks.scoring.threshold import selection_thresholds
from tasks.training.models import load_detector, write_model_facts
from tasks.training.pixels import PixelCache
from tasks.training.trainer import run_trainer, start_run, training_arguments


class DetectionCollator:
    """Rows -> model inputs: `<OD>` prompts and images, the target text as labels with padding
    masked to -100 (so padding costs no loss). With a `PixelCache`, rows carry undecoded images
    ({bytes, path}) and pixels come from the cache as uint8 (the Trainer normalises them on the
    model's device); without one, PIL images go through the processor."""

    def __init__(self, processor, pixels: PixelCache | None = None):
        self.processor, self.pixels = processor, pixels
        self.prompt = None

    def __call__(self, rows: list[dict]) -> dict:
        if self.pixels is None:
            images = [row["image"].convert("RGB") for row in rows]
            inputs = dict(self.processor(text=[OD_PROMPT] * len(rows), images=images,
                                         return_tensors="pt", padding=True))
        else:
            inputs = {"pixel_values": self.pixels.batch([row["image"] for row in rows]),
                      # a copy per row: on a GPU machine the DataLoader pins each batch, and
                      # pinning refuses an expanded view (rows sharing one memory location)
                      **{k: v.repeat(len(rows), 1) for k, v in self._prompt().items()}}
        labels = self.processor.tokenizer([row["target"] for row in rows], return_tensors="pt",
                                          padding=True, return_token_type_ids=False).input_ids
        labels[labels == self.processor.tokenizer.pad_token_id] = -100
        inputs["labels"] = labels
        return inputs

    def _prompt(self) -> dict:
        """The prompt's ids (image placeholders + `<OD>`): the same for every row."""
        if self.prompt is None:
            from PIL import Image

            size = self.processor.image_processor.size
            blank = Image.new("RGB", (size["width"], size["height"]))
            encoded = self.processor(text=[OD_PROMPT], images=[blank], return_tensors="pt")
            self.prompt = {k: v for k, v in encoded.items() if k != "pixel_values"}
        return self.prompt


def capped(split, count: int):
    """At most `count` original (unflipped) rows, spread over the split, always the same ones."""
    rows = original_rows(split)
    if len(rows) <= count:
        return rows
    step = len(rows) / count
    return rows.select([int(i * step) for i in range(count)])


class DetectionQuality(TrainerCallback):
    """At every evaluation, generate `<OD>` on (a capped sample of) the validation split and
    score it exactly as `evaluate` does; `eval_map50` and `eval_map` join the metrics before
    early stopping and the best-checkpoint choice read them (so this callback comes first)."""

    def __init__(self, processor, rows, labels: list[str], batch_size: int):
        self.processor, self.rows, self.labels, self.batch_size = processor, rows, labels, batch_size
        self.budget = new_token_budget(rows["target"], processor.tokenizer)  # all rows' budget

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        import torch

        was_training = model.training
        model.eval()
        with torch.no_grad():
            scores = self._scores(model, args.world_size, args.process_index)
        model.train(was_training)
        quality = {"eval_map50": scores.map50, "eval_map": scores.coco["map"] if scores.coco else 0.0}
        metrics.update(quality)
        if state.log_history and "eval_loss" in state.log_history[-1]:
            state.log_history[-1].update(quality)  # the curves and log_history.json show it

    def _scores(self, model, world_size: int, rank: int):
        """One process scores every row; under DDP each rank generates on rows[rank::world]
        and the predictions are gathered, so every rank gets the same metrics (early stopping
        and the best checkpoint must agree across ranks) on the very images one process uses."""
        if world_size == 1:
            return score_detector(model, self.processor, self.rows, self.labels, self.batch_size,
                                  max_new_tokens=self.budget)
        import torch.distributed

        part = predicted_rows(model, self.processor,
                              self.rows.select(range(rank, len(self.rows), world_size)),
                              self.labels, self.batch_size, max_new_tokens=self.budget)
        parts: list = [None] * world_size
        torch.distributed.all_gather_object(parts, part)
        return interleaved(parts)


def wrap_with_lora(model, config: ModelConfig):
    """A new LoRA adapter on the model, or the adapter `config.adapter` names, to train further
    (a warm start from a champion adapter), or the model itself for full fine-tuning."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.adapter is not None:
        peft_model = PeftModel.from_pretrained(model, config.adapter, is_trainable=True)
    elif config.lora is None:
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


def selection_threshold(model, processor, selection, selected_on: str, labels: list[str],
                        train_config: TrainConfig) -> dict | None:
    """The chosen model on (a capped sample of) the selection set: the confidence threshold with
    the best F1, which `predict` uses unless told otherwise. None without a selection set: the
    test split never sets it."""
    if selection is None:
        return None
    model.eval()
    scores = score_detector(model, processor, capped(selection, train_config.select_images), labels,
                            train_config.batch_size)
    # Each class's own too, where the images hold enough of its boxes: a model is often surer
    # of one defect than another, and one threshold for all trades the sure class away.
    chosen = selection_thresholds([truth[3] for truth in scores.truths], scores.predictions,
                                  DEFAULT_THRESHOLD)
    return {**chosen, "chosen_on": selected_on, "images": len(scores.truths)}


def finetune_detector(dataset_dir: str | Path, out_dir: str | Path, model_config: ModelConfig,
                      train_config: TrainConfig, tiny_folder: str | Path,
                      max_steps: int | None = None, identity: str | None = None,
                      extra_callbacks: tuple = (), tiling: TilingConfig | None = None) -> dict:
    """Fine-tune Florence-2 on a prepared dataset; returns a summary (also in train_summary.json).
    `extra_callbacks` (Trainer callbacks) watch the run, e.g. a benchmark's step timer. The
    model folder also records its classes, answer length and the dataset's `tiling` (predict
    reads them). The checkpoint and the threshold are chosen on validation, or on train images
    set aside (`selected_on`); never on the test split."""
    out, identity, splits = start_run(dataset_dir, out_dir, model_config, train_config, max_steps,
                                      identity)
    train_set, selection = splits.train, splits.selection
    known = [train_set] + ([selection] if selection is not None else [])
    labels = sorted({label for split in known for row in split["labels"] for label in row})
    processor, model = load_detector(model_config.checkpoint, tiny_folder, labels)
    model = wrap_with_lora(model, model_config)  # or, warm started, the champion's adapter
    select = (train_config.select or "map50") if selection is not None else None
    callbacks: tuple = ()
    if select not in (None, "loss"):
        callbacks = (DetectionQuality(processor, capped(selection, train_config.select_images),
                                      labels, train_config.batch_size),)
    args = training_arguments(out, train_config, max_steps, select)
    # The Trainer reads images undecoded: the pixel cache decodes and resizes each one once.
    undecoded = datasets.Image(decode=False)
    summary = run_trainer(model, args, train_set.cast_column("image", undecoded),
                          None if selection is None else selection.cast_column("image", undecoded),
                          DetectionCollator(processor, PixelCache(out / "pixels",
                                                                  processor.image_processor)),
                          train_config, out, callbacks=callbacks + tuple(extra_callbacks),
                          normalise=processor.image_processor)
    trainer = summary.pop("trainer")
    model_dir = out / "model"
    trainer.save_model(str(model_dir))  # the best checkpoint: LoRA adapter, or the full model
    if not trainer.is_world_process_zero():
        return summary  # under DDP, rank 0 alone writes the model folder and the summary
    processor.save_pretrained(model_dir)
    write_model_facts(model_dir, labels,
                      new_token_budget([target for split in known for target in split["target"]],
                                       processor.tokenizer),
                      tiling.model_dump() if tiling else None,
                      selection_threshold(trainer.model, processor, selection, splits.selected_on,
                                          labels, train_config))
    if (model_config.lora is not None or model_config.adapter) and model_config.merge:
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        processor.save_pretrained(out / "merged")
    summary.update({"identity": identity, "select": select, "kind": "florence2",
                    "checkpoint": model_config.checkpoint,
                    "base_model": str(tiny_folder) if model_config.checkpoint == "tiny"
                    else model_config.checkpoint,
                    "lora": model_config.lora is not None or model_config.adapter is not None,
                    "adapter": model_config.adapter, "model_dir": str(model_dir),
                    "train_rows": len(train_set), "selected_on": splits.selected_on,
                    "selection_rows": 0 if selection is None else len(selection)})
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
