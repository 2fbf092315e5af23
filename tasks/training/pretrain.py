"""A pretrained tiny Florence-2 base, made offline: the stand-in for Florence-2-base where no
weights can be downloaded (the demo, the tests, an air-gapped trial).

A real user fine-tunes a LoRA adapter on a base that already knows how to find things and say
where they are. `build_pretrained_base` makes such a base at toy size: the tiny random
Florence-2 (`tiny.py`), trained in full on generic synthetic shapes (`SHAPES`: not the demo's
defect classes) to answer `<OD>`. Its byte-level tokenizer spells any label, so a LoRA adapter can
teach it new class names. Built once, into a folder (the home's `bases/`), reused after.
"""

from __future__ import annotations

import json
import random
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import IterableDataset

from tasks.core.forks import forget_prefect_exit_hooks_in_forks
from tasks.core.records import Box
from tasks.dataset.loc_tokens import OD_PROMPT, od_target
from tasks.training.tiny import FlorenceSize, build_tiny_florence

SHAPES = ("circle", "square", "triangle", "cross")
BASE_STEPS = 2000
BASE_NAME = "tiny-florence2-shapes"
DONE = "pretraining.json"


def shape_image(rng: random.Random, size: int) -> tuple[Image.Image, list[Box]]:
    """A grainy background (factory surfaces are rarely plain) with one filled shape of random
    size, place and colour, contrasting with the background."""
    background = tuple(rng.randint(60, 200) for _ in range(3))
    grain = np.random.default_rng(rng.getrandbits(32)).normal(128, rng.uniform(8, 24), (size, size))
    # Blurred as one gray channel (a third of the work of blurring RGB), then tinted.
    grain = np.asarray(Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8), "L")
                       .filter(ImageFilter.GaussianBlur(1)), dtype=np.int16) - 128
    image = Image.fromarray(np.clip(np.array(background)[None, None, :] + grain[..., None], 0, 255)
                            .astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    label = rng.choice(SHAPES)
    w, h = rng.randint(size // 3, size // 2), rng.randint(size // 3, size // 2)
    x0, y0 = rng.randint(0, size - w - 1), rng.randint(0, size - h - 1)
    x1, y1 = x0 + w, y0 + h
    dark = sum(background) > 3 * 128
    colour = tuple(rng.randint(0, 50) if dark else rng.randint(205, 255) for _ in range(3))
    if label == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif label == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif label == "triangle":
        draw.polygon([(x0, y1 - 1), ((x0 + x1) // 2, y0), (x1 - 1, y1 - 1)], fill=colour)
    else:
        thick = max(3, min(w, h) // 4)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle([x0, cy - thick // 2, x1 - 1, cy + thick // 2], fill=colour)
        draw.rectangle([cx - thick // 2, y0, cx + thick // 2, y1 - 1], fill=colour)
    return image.filter(ImageFilter.GaussianBlur(0.5)), [Box(x1=x0, y1=y0, x2=x1, y2=y1, label=label)]


class ShapeBatches(IterableDataset):
    """The pretraining batches, `<OD>` inputs and target ids, drawn in order from one seeded
    generator (an iterable dataset for a DataLoader worker: the same batches as drawn inline)."""

    def __init__(self, processor_dir: Path, steps: int, seed: int, batch_size: int, image_size: int):
        self.processor_dir, self.steps, self.seed = processor_dir, steps, seed
        self.batch_size, self.image_size = batch_size, image_size

    def __iter__(self):
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(self.processor_dir)
        rng, size = random.Random(self.seed), self.image_size
        for _ in range(self.steps):
            batch = [shape_image(rng, size) for _ in range(self.batch_size)]
            inputs = processor(text=[OD_PROMPT] * len(batch), images=[image for image, _ in batch],
                               return_tensors="pt", padding=True)
            labels = processor.tokenizer([od_target(boxes, size, size) for _, boxes in batch],
                                         return_tensors="pt", padding=True,
                                         return_token_type_ids=False).input_ids
            labels[labels == processor.tokenizer.pad_token_id] = -100
            yield dict(inputs), labels


def build_pretrained_base(folder: str | Path, steps: int = BASE_STEPS, seed: int = 0,
                          batch_size: int = 16, lr: float = 1e-3, image_size: int = 128) -> Path:
    """The pretrained tiny base in `folder`, built (and trained) only if it is not there yet.
    Written under a temporary name and renamed when complete, so a killed build leaves none.
    Shapes are drawn at 128 px, as the demo's images, and resized by the processor as they are
    (drawn at the model's 64 px instead, the base built faster but an adapter on it reached
    test mAP50 0.21 where this one reaches 0.99)."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForImageTextToText

    folder = Path(folder)
    if (folder / DONE).is_file():
        return folder
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}")
    build_tiny_florence(staging, list(SHAPES), FlorenceSize(), seed=seed)
    model = AutoModelForImageTextToText.from_pretrained(staging)
    torch.manual_seed(seed)
    # fused: one kernel for all parameters (a quarter of a tiny model's step time otherwise)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=True)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 1 - step / steps))  # linear warmup and decay, as the Trainer does
    model.train()
    losses = []
    # A worker process draws and processes the batches (a third of a step) while the model
    # trains on one thread: 400 steps in 54 s against 66 s on 2 cores, the same batches in the
    # same order. (A second torch thread gains the model step 15% but fights the worker for the
    # cores: 74 s; a thread drawing beside the model lost to the GIL.) The loader seeds its
    # worker from a generator of its own: drawn from torch's global one, it would shift every
    # dropout mask after it, and that other base taught the demo's adapter far less (night-1
    # validation mAP50 0.64 against 0.95).
    forget_prefect_exit_hooks_in_forks()  # the demo builds its base in a process running Prefect
    batches = torch.utils.data.DataLoader(ShapeBatches(staging, steps, seed, batch_size, image_size),
                                          batch_size=None, num_workers=1, prefetch_factor=4,
                                          generator=torch.Generator().manual_seed(seed))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for inputs, labels in tqdm(batches, total=steps, desc="pretraining the tiny base on shapes",
                                   unit="step"):
            loss = model(**inputs, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if len(losses) % 250 == 0:
                tqdm.write(f"pretraining step {len(losses)}: loss {sum(losses[-250:]) / 250:.3f}")
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(staging)
    card = (staging / "README.md").read_text()
    (staging / "README.md").write_text(card + (
        f"\nPretrained by `defectflow build-base` for {steps} steps on generic synthetic shapes "
        f"({', '.join(SHAPES)}): it has learnt to find things and say where they are, and knows "
        "no defect class. Fine-tune it with LoRA as you would Florence-2-base.\n"))
    (staging / DONE).write_text(json.dumps({"steps": steps, "seed": seed, "shapes": SHAPES,
                                            "first_loss": losses[0], "last_loss": losses[-1]}))
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder
