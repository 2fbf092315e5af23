"""A ViT image classifier on the prepared dataset (the published notebook recipe: one label per
image, e.g. passed / Xplus / Xminus / ..., derived from its boxes), fine-tuned with the Trainer."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tasks.core.config import ModelConfig, TrainConfig
from tasks.scoring.score import original_rows
from tasks.training.models import unavailable
from tasks.training.tiny import TINY, build_tiny_vit, built_once
from tasks.training.trainer import (
    run_trainer,
    save_checkpoints_in_model_format,
    start_run,
    training_arguments,
)


def image_label(labels: list[str], mode: str, negative: str) -> str:
    """One class for an image: its most frequent box class (ties: alphabetical), its first box's
    class, or `negative` (e.g. `passed`) when it has no box."""
    if not labels:
        return negative
    if mode == "first":
        return labels[0]
    counts = Counter(labels)
    return min(counts, key=lambda label: (-counts[label], label))


def load_classifier(checkpoint: str, labels: list[str], tiny_folder: str | Path | None = None):
    """(image processor, model) with a fresh head for `labels`, from a Hub id, folder or `tiny`."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    if checkpoint == TINY:
        if tiny_folder is None:
            raise ValueError("the tiny model needs a folder to be built in")
        built_once(tiny_folder, lambda: build_tiny_vit(tiny_folder, labels))
        checkpoint = str(tiny_folder)
    try:
        processor = AutoImageProcessor.from_pretrained(checkpoint)
        model = AutoModelForImageClassification.from_pretrained(
            checkpoint, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as exc:
        raise unavailable(checkpoint, exc) from exc
    return processor, model


def _transforms(processor, train: bool):
    """Random-resized crop + flip for training (the notebook recipe), plain resize otherwise."""
    from torchvision import transforms as T

    size = processor.size.get("height") or processor.size.get("shortest_edge")
    normalize = T.Normalize(mean=processor.image_mean, std=processor.image_std)
    if train:
        steps = [T.RandomResizedCrop(size, scale=(0.6, 1.0)), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize((size, size))]
    return T.Compose([*steps, T.ToTensor(), normalize])


def eval_transform(processor):
    """What an image goes through at evaluation and prediction: resize and normalize only."""
    return _transforms(processor, train=False)


class ClassificationCollator:
    def __init__(self, processor, label_ids: dict[str, int], mode: str, negative: str, train: bool):
        self.transform = _transforms(processor, train)
        self.label_ids, self.mode, self.negative = label_ids, mode, negative

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        pixels = torch.stack([self.transform(row["image"].convert("RGB")) for row in rows])
        labels = torch.tensor([self.label_ids[image_label(row["labels"], self.mode, self.negative)]
                               for row in rows])
        return {"pixel_values": pixels, "labels": labels}


class _SplitCollator:
    """The Trainer uses one collator; this one augments only while the model is in train mode."""

    def __init__(self, model, train_collator, eval_collator):
        self.model, self.train_collator, self.eval_collator = model, train_collator, eval_collator

    def __call__(self, rows):
        return (self.train_collator if self.model.training else self.eval_collator)(rows)


def accuracy(eval_prediction) -> dict:
    logits, labels = eval_prediction
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def finetune_classifier(dataset_dir: str | Path, out_dir: str | Path, model_config: ModelConfig,
                        train_config: TrainConfig, tiny_folder: str | Path,
                        max_steps: int | None = None, identity: str | None = None,
                        extra_callbacks: tuple = ()) -> dict:
    """Fine-tune a ViT image classifier; `extra_callbacks` (Trainer callbacks) watch the run."""
    out, identity, splits = start_run(dataset_dir, out_dir, model_config, train_config, max_steps,
                                      identity)
    train_set, selection = original_rows(splits.train), splits.selection
    known = [train_set] + ([selection] if selection is not None else [])
    mode, negative = model_config.image_label, model_config.negative_label
    labels = sorted({image_label(row, mode, negative) for split in known for row in split["labels"]})
    processor, model = load_classifier(model_config.checkpoint, labels, tiny_folder)
    label_ids = {label: i for i, label in enumerate(labels)}
    save_checkpoints_in_model_format(model)
    collator = _SplitCollator(model, ClassificationCollator(processor, label_ids, mode, negative, True),
                              ClassificationCollator(processor, label_ids, mode, negative, False))
    select = (train_config.select or "accuracy") if selection is not None else None
    args = training_arguments(out, train_config, max_steps, select)
    summary = run_trainer(model, args, train_set, selection, collator, train_config, out,
                          compute_metrics=accuracy, callbacks=tuple(extra_callbacks))
    trainer = summary.pop("trainer")
    model_dir = out / "model"
    trainer.save_model(str(model_dir))
    final = trainer.evaluate() if selection is not None else {}  # every rank takes part
    if not trainer.is_world_process_zero():
        return summary  # under DDP, rank 0 alone writes the model folder and the summary
    processor.save_pretrained(model_dir)
    summary.update({"identity": identity, "select": select, "kind": "vit",
                    "checkpoint": model_config.checkpoint,
                    "labels": labels,
                    "eval_accuracy": final.get("eval_accuracy"), "model_dir": str(model_dir),
                    "train_rows": len(train_set), "selected_on": splits.selected_on,
                    "selection_rows": 0 if selection is None else len(selection)})
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
