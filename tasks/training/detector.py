"""Fine-tuning Florence-2 for `<OD>` with the HF Trainer and a peft LoRA adapter.

One readable path, as in transformers' examples: load the prepared dataset, load the model,
wrap it with LoRA, train with checkpoints every `eval_steps` (resuming from the last one after a
crash), keep the best checkpoint by validation loss, save the adapter + processor (and optionally
the merged model) where `from_pretrained` finds them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.core.config import ModelConfig, TrainConfig
from tasks.dataset.loc_tokens import OD_PROMPT
from tasks.training.models import load_detector
from tasks.training.trainer import run_trainer, start_run, training_arguments


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


def finetune_detector(dataset_dir: str | Path, out_dir: str | Path, model_config: ModelConfig,
                      train_config: TrainConfig, tiny_folder: str | Path,
                      max_steps: int | None = None) -> dict:
    """Fine-tune Florence-2 on a prepared dataset; returns a summary (also in train_summary.json)."""
    out, identity, train_set, eval_set = start_run(dataset_dir, out_dir, model_config,
                                                   train_config, max_steps)
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
    summary.update({"identity": identity, "kind": "florence2", "checkpoint": model_config.checkpoint,
                    "base_model": str(tiny_folder) if model_config.checkpoint == "tiny"
                    else model_config.checkpoint,
                    "lora": model_config.lora is not None, "model_dir": str(model_dir),
                    "train_rows": len(train_set), "eval_rows": len(eval_set)})
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
