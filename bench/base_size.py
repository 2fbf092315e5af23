"""Florence-2 at its published base size, exercised: defectflow's own LoRA training and prediction
on CPU, with random weights built here (the published configuration's sizes; no download).

    python -m bench.base_size [--steps 2]

Builds the checkpoint folder, prepares a few generated images, trains a LoRA adapter through
`finetune_detector` (the Trainer, the collator, the map50 evaluation) for `--steps` steps, then
runs one `<OD>` generation through `predict_batch`. Reports seconds per training step, seconds
for the generation, and the peak memory (RSS) of the process that did it, which is a fresh one.
Writes bench/base_size.json and its section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.results import measured_at, write_section

HERE = Path(__file__).resolve().parent


def measure(work: Path, steps: int) -> dict:
    import torch
    from transformers import TrainerCallback

    from tasks.core.config import DatasetConfig, ModelConfig, TrainConfig
    from tasks.dataset.local_run import prepare_steps
    from tasks.demo.sample_data import generate
    from tasks.scoring.generation import new_token_budget, predict_batch
    from tasks.training.detector import finetune_detector
    from tasks.training.models import load_finetuned_detector
    from tasks.training.tiny import FLORENCE2_BASE, build_tiny_florence

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    started = time.perf_counter()
    checkpoint = build_tiny_florence(work / "florence2-base-random", ["scratch", "spot", "patch"],
                                     FLORENCE2_BASE)
    build_seconds = time.perf_counter() - started
    generate(work / "source", count=16, size=768, seed=1, troubles=False)
    config = DatasetConfig.model_validate({
        "name": "base-size", "grayscale": "convert",
        "source": {"format": "voc", "images": work / "source" / "images",
                   "annotations": work / "source" / "annotations"},
        "split": {"train": 0.6, "validation": 0.2, "test": 0.2}})
    prepare_steps(config, work / "dataset", work / "home")
    timer = StepTimer()
    summary = finetune_detector(
        work / "dataset", work / "run", ModelConfig(checkpoint=str(checkpoint)),
        TrainConfig(max_steps=steps, batch_size=2, eval_steps=steps, select="map50",
                    select_images=1, lr=1e-5, seed=0),
        tiny_folder=work / "unused", extra_callbacks=(timer,))
    processor, model = load_finetuned_detector(summary["model_dir"])
    import datasets

    test = datasets.load_dataset(str(work / "dataset"))["test"]
    budget = new_token_budget(test["target"], processor.tokenizer)
    started = time.perf_counter()
    [prediction] = predict_batch(model, processor, [test[0]["image"]], {"scratch", "spot", "patch"},
                                 max_new_tokens=budget)
    generation_seconds = time.perf_counter() - started
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": FLORENCE2_BASE.image_size, "batch_size": 2, "steps": len(timer.seconds),
        "seconds_per_step": timer.seconds, "generation_seconds": round(generation_seconds, 2),
        "generated_tokens_max": budget, "generation_truncated": prediction.truncated,
        "build_seconds": round(build_seconds, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "torch_threads": torch.get_num_threads(), "device": "cpu", "dtype": "fp32",
    }


def section(result: dict) -> str:
    steps = ", ".join(f"{s:.1f}" for s in result["seconds_per_step"])
    return (
        "## Florence-2 at base size (issue 12): `python -m bench.base_size` (in `make bench`) at "
        f"{measured_at()}\n\n"
        f"The published Florence-2-base configuration ({result['parameters'] / 1e6:.0f} M parameters, "
        f"{result['image_size']} px, random weights built offline in {result['build_seconds']} s) "
        "through `finetune_detector` (LoRA r 8 on every attention and MLP projection, the Trainer, "
        "the map50 evaluation) and `predict_batch`, on the CPU in fp32, batch "
        f"{result['batch_size']}, {result['torch_threads']} threads:\n\n"
        "| measurement | value |\n|---|---|\n"
        f"| seconds per LoRA training step | {steps} |\n"
        f"| one `<OD>` generation (up to {result['generated_tokens_max']} new tokens) | "
        f"{result['generation_seconds']} s |\n"
        f"| peak memory of the process (RSS) | {result['peak_rss_gib']} GiB |\n\n"
        "The first step includes the one-time warm-up of the kernels. No GPU was lent to the session "
        "that measured this, so the bf16 GPU throughput against the notebooks' recipe (fp32, batch "
        "8, processor in the loop) is not measured.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # the measuring process: fresh, so its peak memory is this case's alone
        result = measure(args.child, args.steps)
        (args.child / "result.json").write_text(json.dumps(result, indent=1))
        return
    work = Path(tempfile.mkdtemp(prefix="defectflow-base-size-"))
    subprocess.run([sys.executable, "-m", "bench.base_size", "--child", str(work),
                    "--steps", str(args.steps)], cwd=HERE.parent, check=True)
    result = json.loads((work / "result.json").read_text())
    (HERE / "base_size.json").write_text(json.dumps(result, indent=1))
    write_section(section(result), "## Florence-2 at base size")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
