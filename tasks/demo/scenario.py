"""The two nights of `defectflow demo`: synthetic batches and a config sized for 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

from tasks.demo.sample_data import generate

DEMO_FIRST_BATCH = 800
DEMO_SECOND_BATCH = 200
DEFECT_EXTENT = (1 / 3, 1 / 2)  # defect sides as a fraction of the 128 px image
DEMO_CONFIG = """# Written by `defectflow demo`: synthetic LabelImg-style defects, tiny offline Florence-2.
name: demo
source: {{format: voc, images: {images}, annotations: {annotations}}}
grayscale: convert
augment: {{hflip: true, vflip: false}}
split: {{train: 0.7, validation: 0.1, test: 0.2}}
labels: [patch, scratch, spot]
model:
  kind: florence2
  checkpoint: tiny      # built offline: the real architecture at toy size, random weights
  lora: null            # from random weights LoRA has nothing to adapt: train it all
train:
  max_steps: {steps}
  lr: 1.0e-3            # from scratch; fine-tuning a real checkpoint uses 1e-5 .. 5e-6
  batch_size: 16
  eval_steps: 250
  patience: 4
  warmup_ratio: 0.05
  weight_decay: 0.01
  warm_start: true      # night 2 starts from night 1's champion
registry:
  promote: {{metric: map50, min_gain: 0.0}}
"""
DEMO_STEPS = 2500  # the tiny model "clicks" between ~1000 and ~2000 steps, depending on float noise


def write_demo_config(work: Path, steps: int = DEMO_STEPS) -> Path:
    source = work / "source"
    path = work / "demo.yaml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(DEMO_CONFIG.format(images=source / "images", annotations=source / "annotations",
                                       steps=steps), encoding="utf-8")
    return path


def add_batch(source: Path, count: int, start: int, troubles: bool) -> str:
    written = generate(source, count=count, size=128, seed=5, start=start, troubles=troubles,
                       max_defects=1, extent=DEFECT_EXTENT)
    extra = " + a truncated JPEG, an XML whose image is missing, a macOS junk file" if troubles else ""
    return (f"{'generated' if start == 0 else 'new images landed:'} {written['images']} images "
            f"({written['grayscale']} grayscale, {written['boxes']} boxes){extra} under {source}")
