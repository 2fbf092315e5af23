"""Training input and evaluation throughput, each against the seed notebooks' way in this run.

    python -m bench.throughput [--images 32] [--model M --dataset D]

- `train_input_speedup`: samples/s of defectflow's training input (the pixel cache: decode and
  resize once, uint8 batches, normalised on the device) over the seeds' collate (every image
  decoded, resized and normalised by the processor in every epoch), at Florence-2's 768 x 768.
- `eval_speedup_vs_seed`: images/s of `predict_batch` (batched, KV cache, generation sized from
  the data) over the seeds' per-image `run_example` (num_beams=3, max_new_tokens=1024), same
  model, images and beams; both mAP50s reported. It needs a trained model: by default the
  champion and dataset `make demo` left in work/.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

from bench.results import measured_at, median_time, record, write_section

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "work" / "demo" / "nightly"


def photos(count: int) -> list[bytes]:
    """NEU-DET-like 200 x 200 JPEGs (noise, so the codec has work to do)."""
    from PIL import Image

    out = []
    for n in range(count):
        buffer = io.BytesIO()
        Image.effect_noise((200, 200), 30 + n % 40).convert("RGB").save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def bench_train_input(count: int, batch: int = 8) -> list[tuple]:
    from PIL import Image
    from transformers import AutoProcessor

    from tasks.training.detector import DetectionCollator
    from tasks.training.pixels import PixelCache, normalise_on_device
    from tasks.training.tiny import build_tiny_florence

    work = Path(tempfile.mkdtemp(prefix="defectflow-throughput-"))
    processor = AutoProcessor.from_pretrained(build_tiny_florence(work / "tiny", ["dent"]))
    processor.image_processor.size = {"height": 768, "width": 768}  # Florence-2-base's input
    data = photos(count)
    target = "dent<loc_100><loc_120><loc_300><loc_340>"

    def seeds_epoch():  # the notebooks' Dataset.__getitem__ + collate_fn, every epoch
        for start in range(0, count, batch):
            images = [Image.open(io.BytesIO(b)).convert("RGB") for b in data[start:start + batch]]
            processor(text=["<OD>"] * len(images), images=images, return_tensors="pt",
                      padding=True)
            processor.tokenizer([target] * len(images), return_tensors="pt", padding=True)

    collator = DetectionCollator(processor, PixelCache(work / "pixels", processor.image_processor))
    rows = [{"image": {"bytes": b, "path": None}, "target": target} for b in data]

    def ours_epoch(normalise_here: bool = False):
        for start in range(0, count, batch):
            inputs = collator(rows[start:start + batch])
            if normalise_here:  # what a CPU-only run adds in its training step
                normalise_on_device(inputs["pixel_values"], processor.image_processor)

    first = median_time(ours_epoch, 1)  # cold: every image decoded and resized once
    seeds = median_time(seeds_epoch, 3)
    ours = median_time(ours_epoch, 3)
    ours_cpu = median_time(lambda: ours_epoch(True), 3)
    record("train_input_speedup", count / ours, count / seeds,
           measurement=f"samples/s at 768 x 768, {count} images, batch {batch}, warm cache")
    return [("training input, samples/s at 768 px (warm cache; normalised on the device)",
             count / ours, count / seeds, "seeds' collate, samples/s", ">= 2"),
            ("  the same, normalised on this CPU (a run without a GPU)", count / ours_cpu,
             count / seeds, "seeds' collate, samples/s", "reported"),
            ("  first epoch (cache cold: decode + resize once)", count / first, count / seeds,
             "seeds' collate, samples/s", "reported")]


def bench_eval(model_dir: Path, dataset_dir: Path, count: int) -> list[tuple]:
    import datasets
    import torch

    from tasks.scoring.coco import coco_detections, coco_evaluate, coco_ground_truth
    from tasks.scoring.generation import new_token_budget, predict_batch
    from tasks.scoring.score import original_rows, truth_boxes
    from tasks.training.models import load_finetuned_detector, read_model_facts

    processor, model = load_finetuned_detector(model_dir)
    loaded = datasets.load_dataset(str(dataset_dir))
    rows = original_rows(loaded["test"])
    rows = rows.select(range(min(count, len(rows))))
    labels = read_model_facts(model_dir).get("labels") or sorted(
        {label for row in rows["labels"] for label in row})
    images = [row["image"].convert("RGB") for row in rows]
    truths = [(row["image_id"], row["width"], row["height"], truth_boxes(row, labels))
              for row in rows]

    def seeds():  # the notebooks' run_example, one image at a time
        found = []
        for image in images:
            inputs = processor(text="<OD>", images=image, return_tensors="pt")
            with torch.no_grad():
                ids = model.generate(input_ids=inputs["input_ids"],
                                     pixel_values=inputs["pixel_values"], max_new_tokens=1024,
                                     num_beams=3)
            text = processor.batch_decode(ids, skip_special_tokens=False)[0]
            parsed = processor.post_process_generation(text, task="<OD>",
                                                       image_size=(image.width, image.height))
            found.append(parsed["<OD>"])
        return found

    budget = new_token_budget([t for part in loaded.values() for t in part["target"]],
                              processor.tokenizer)

    def ours():
        return [p for start in range(0, len(images), 8) for p in predict_batch(
            model, processor, images[start:start + 8], set(labels), num_beams=3,
            max_new_tokens=budget)]

    started = time.perf_counter()
    seed_out = seeds()
    seed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    our_out = ours()
    our_seconds = time.perf_counter() - started

    from tasks.core.records import Box

    gt = coco_ground_truth(truths, labels)
    seed_boxes = [([Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3], label=label)
                    for b, label in zip(p["bboxes"], p["labels"], strict=True) if label in labels],)
                  for p in seed_out]
    seed_map = coco_evaluate(gt, coco_detections(((i + 1, boxes, [1.0] * len(boxes)) for i, (boxes,)
                                                  in enumerate(seed_boxes)), labels))["map50"]
    our_map = coco_evaluate(gt, coco_detections(((i + 1, p.boxes, p.scores) for i, p
                                                 in enumerate(our_out)), labels))["map50"]
    record("eval_speedup_vs_seed", len(images) / our_seconds, len(images) / seed_seconds,
           measurement=f"images/s, {len(images)} test images of the demo, num_beams 3",
           map50_ours=our_map, map50_seed=seed_map)
    return [(f"evaluation, images/s, {len(images)} demo test images, 3 beams (mAP50 ours "
             f"{our_map:.3f}, seeds {seed_map:.3f})", len(images) / our_seconds,
             len(images) / seed_seconds, "seeds' run_example, images/s", ">= 3")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--dataset", type=Path, default=DEMO / "prepared" / "dataset")
    args = parser.parse_args()
    rows = bench_train_input(args.images)
    champions = sorted((DEMO / "champion").glob("v*/model"))
    model = args.model or (champions[-1] if champions else None)
    skipped = ""
    if model is not None and model.is_dir() and args.dataset.is_dir():
        rows += bench_eval(model, args.dataset, args.images)
    else:
        skipped = ("\n`eval_speedup_vs_seed` was not measured: it needs a trained model and its "
                   "dataset (run `make demo` first, or pass --model and --dataset).\n")
        print(skipped)
    table = ["| measurement | value | baseline | ratio | baseline is | goal |", "|---|---|---|---|---|---|"]
    table += [f"| {name} | {value:.2f} | {base:.2f} | **{value / base:.2f}** | {what} | {goal} |"
              for name, value, base, what, goal in rows]
    text = "\n".join(["## Throughput (issue 16): `python -m bench.throughput` (in `make bench`) at "
                      f"{measured_at()}, {time.strftime('%Y-%m-%d')}", "", *table, skipped])
    print(text)
    write_section(text, "## Throughput")


if __name__ == "__main__":
    main()
