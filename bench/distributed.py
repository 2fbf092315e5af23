"""Training throughput on 1 and 2 processes under torchrun (DDP), reported, not asserted.

    python -m bench.distributed [--processes 1 2] [--steps 40] [--batch 4] [--json PATH]

The tiny Florence-2 (LoRA) on generated 64 px defect images, each run a fresh run folder:
samples/s = optimizer steps x global batch / the Trainer's train runtime (one evaluation of 4
validation images at the end included). `in-process` is the same training without torchrun.
On a CPU the processes share its cores (OMP threads = cores / processes) and talk over gloo;
on a GPU machine each process takes a GPU and NCCL (`--processes 1` where there is one GPU).
Records `train_ddp_2_vs_1_process` (samples/s of 2 processes over 1) in results.json; a run
with `--json` writes only that file (the GPU machine's run; bench/distributed_gpu.json keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from bench.results import measured_at, record, write_section

GPU_RESULT = Path(__file__).resolve().with_name("distributed_gpu.json")


def dataset(work: Path) -> Path:
    from tasks.core.config import DatasetConfig
    from tasks.dataset.local_run import prepare_steps
    from tasks.demo.sample_data import generate

    generate(work / "source", count=60, size=64, seed=7, troubles=False)
    config = DatasetConfig.model_validate({
        "name": "bench-ddp", "grayscale": "convert", "shard_size": 16,
        "source": {"format": "voc", "images": work / "source" / "images",
                   "annotations": work / "source" / "annotations"},
        "split": {"train": 0.8, "validation": 0.1, "test": 0.1}})
    prepare_steps(config, work / "dataset", work / "home")
    return work / "dataset"


def throughput(data: Path, out: Path, processes: int | None, steps: int, batch: int) -> dict:
    """One training; `processes` None: in this process, without torchrun."""
    import torch

    from tasks.core.config import ModelConfig, TrainConfig
    from tasks.core.model_config import DistributedConfig
    from tasks.training.train import train_step

    train = TrainConfig(lr=5e-3, batch_size=batch, max_steps=steps, eval_steps=steps, seed=1,
                        select_images=4, patience=10, dataloader_workers=0,
                        distributed=DistributedConfig(nproc_per_node=processes) if processes else None)
    summary = train_step(data, out, ModelConfig(checkpoint="tiny"), train)
    samples = summary["global_step"] * summary["global_batch"]
    return {"processes": processes or "in-process", "steps": summary["global_step"],
            "global_batch": summary["global_batch"], "train_runtime_s": summary["train_runtime_s"],
            "samples_per_s": samples / summary["train_runtime_s"],
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else f"CPU ({os.cpu_count()} cores)",
            "backend": "nccl" if torch.cuda.is_available() else "gloo"}


def table(rows: list[dict]) -> list[str]:
    lines = ["| processes | device | backend | global batch | steps | train s | samples/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        backend = r["backend"] if r["processes"] != "in-process" else "-"
        lines.append(f"| {r['processes']} | {r['device']} | {backend} | {r['global_batch']} "
                     f"| {r['steps']} | {r['train_runtime_s']:.1f} | {r['samples_per_s']:.1f} |")
    return lines


def section(rows: list[dict], gpu: dict | None, at: str) -> str:
    text = ["## Distributed training throughput (`python -m bench.distributed`)", "",
            f"Measured at {at} on {platform.machine()}; the tiny Florence-2 (LoRA) on "
            "64 px images, samples/s = steps x global batch / train runtime. Reported, not a goal. "
            "On the CPU the processes split its cores (1 thread each of 2): the tiny model's "
            "steps are too small for a second thread to help one process, so two processes "
            "(twice the global batch, one gloo all-reduce a step) get more done; a real model's "
            "steps would tell another story. A run takes 3-4 s: the figures move by a third "
            "between runs. On the GPU machine (one GPU) only the NCCL path with one process can "
            "run; the tiny model is latency-bound there, the point is that the path runs.", "",
            *table(rows)]
    if gpu:
        text += ["", f"On the GPU machine (NCCL), measured at {gpu['measured_at']}:", "",
                 *table(gpu["rows"])]
        if gpu.get("note"):
            text += ["", gpu["note"][0].upper() + gpu["note"][1:] + "."]
    return "\n".join(text) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--json", type=Path, help="write the rows here, and nothing else")
    args = parser.parse_args()
    at = measured_at()  # before this run writes results.json and RESULTS.md
    work = Path(tempfile.mkdtemp(prefix="defectflow-bench-ddp-"))
    data = dataset(work)
    rows = [throughput(data, work / "in-process", None, args.steps, args.batch)]
    rows += [throughput(data, work / f"ddp-{n}", n, args.steps, args.batch) for n in args.processes]
    for row in rows:
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps({"measured_at": at, "rows": rows}, indent=1))
        return
    by_processes = {row["processes"]: row["samples_per_s"] for row in rows}
    if 1 in by_processes and 2 in by_processes:
        record("train_ddp_2_vs_1_process", by_processes[2], by_processes[1],
               unit="samples/s", measured_at=at)
    gpu = json.loads(GPU_RESULT.read_text()) if GPU_RESULT.exists() else None
    write_section(section(rows, gpu, at), "## Distributed training throughput")


if __name__ == "__main__":
    main()
