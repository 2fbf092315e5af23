"""Training on several processes and machines through PyTorch's own launcher, `torchrun`.

The train step writes what to train into the run folder (`launch.json`) and starts
`python -m torch.distributed.run ... -m tasks.training.rank launch.json`; every rank runs the same
`finetune_*` function as one process does, and the Trainer does DDP (NCCL on GPUs, gloo on
CPUs). Rank 0 alone writes the run folder. Its log lines come back on its stdout, one per line,
and go to the run log here; the steps bar and the ranks' warnings go to the console (stderr).
A failed rank makes torchrun stop the others and exit non-zero: the step fails with that rank's
error. Another machine joins with `defectflow train-node CONFIG --node-rank N`, the same
launcher with its own node rank (fixed ranks: the flow's machine is always node 0, rank 0).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from tasks.core.config import ModelConfig, TilingConfig, TrainConfig
from tasks.core.deadline import StepTimedOut
from tasks.core.logs import run_logger
from tasks.core.model_config import DistributedConfig
from tasks.core.processes import process_alive
from tasks.dataset.publish import dataset_fingerprint_of
from tasks.training.run_folder import claim_output, run_identity
from tasks.training.tiny import TINY

LAUNCH_FILE = "launch.json"
JOIN = "--join"  # what the other machines pass instead of a launch file: rank 0 sends it
TIMEOUT_ENV = "DEFECTFLOW_DDP_TIMEOUT_S"
LAUNCHER_ENV = "DEFECTFLOW_LAUNCHER_PID"  # the ranks end when this process is gone


class RanksFailed(RuntimeError):
    """torchrun ended with a failed rank (or could not gather the nodes)."""


def torchrun_command(distributed: DistributedConfig, node_rank: int, launch: str) -> list[str]:
    """The launcher's command line for this machine. One machine: a standalone rendezvous on a
    free local port. Several: static ranks (`node_rank` 0 is the flow's machine and hosts the
    c10d store at `rdzv_endpoint`), waiting `join_timeout_minutes` for the others."""
    command = [sys.executable, "-m", "torch.distributed.run",
               f"--nproc-per-node={distributed.nproc_per_node}", "--max-restarts=0"]
    if distributed.nnodes == 1:
        command += ["--standalone", "--nnodes=1"]
    else:
        command += [f"--nnodes={distributed.nnodes}", f"--node-rank={node_rank}",
                    "--rdzv-backend=static", f"--rdzv-endpoint={distributed.rdzv_endpoint}",
                    f"--rdzv-id={distributed.rdzv_id}",
                    f"--rdzv-conf=timeout={int(distributed.join_timeout_minutes * 60)}"]
    return command + ["-m", "tasks.training.rank", launch]


def rank_environment(distributed: DistributedConfig) -> dict[str, str]:
    """The ranks' environment: unbuffered output (lines arrive as they are written), the cores
    shared between this machine's ranks (torchrun would set 1 thread each, with a warning),
    and the collectives' timeout (a rank that hangs fails the step)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // distributed.nproc_per_node)))
    env[TIMEOUT_ENV] = str(int(distributed.timeout_minutes * 60))
    env[LAUNCHER_ENV] = str(os.getpid())
    return env


def end_with_launcher(pid: int, every_s: float = 2.0) -> threading.Thread:
    """In a rank: exit once the process that started torchrun is gone (a night killed with
    SIGKILL). Without it, rank 0 dies only at its next write to the launcher's closed pipe (the
    steps bar, every step), and a phase that writes nothing (an evaluation, filling the pixel
    cache) trains on into a run folder the next night claims. torchrun then stops the others."""
    def watch() -> None:
        while process_alive(pid):
            time.sleep(every_s)
        os._exit(3)

    watcher = threading.Thread(target=watch, name="end-with-launcher", daemon=True)
    watcher.start()
    return watcher


RANK_LOG = "@defectflow-log "


def rank_log_text(level: int, message: str) -> str:
    """A log record of rank 0 as one line of its stdout (a traceback's lines stay one record)."""
    return RANK_LOG + json.dumps([level, message])


def rank_log_line(line: str) -> tuple[int, str]:
    """(level, message) of a line of rank 0's stdout: a record from its logger, anything else
    (a library's print) as INFO."""
    if line.startswith(RANK_LOG):
        level, message = json.loads(line[len(RANK_LOG):])
        return level, message
    return 20, line


def root_cause(stderr_tail: str) -> str:
    """What torchrun says failed (its "Root Cause" section, with the rank's traceback), else the
    last lines it printed."""
    found = re.search(r"Root Cause \(first observed failure\):.*", stderr_tail, re.S)
    text = found.group(0) if found else "\n".join(stderr_tail.splitlines()[-30:])
    return text.strip().strip("=").strip()


def run_ranks(command: list[str], env: dict[str, str],
              log: Callable[[int, str], None]) -> None:
    """Run torchrun, logging rank 0's lines with `log(level, message)` as they come and passing
    the console output (steps bar, warnings) through; RanksFailed with the root cause when it
    exits non-zero (StepTimedOut when a rank ran out of time: like one process, not retried).
    The ranks are stopped when this is interrupted (a step timeout)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tail: deque[bytes] = deque(maxlen=64)  # the last ~256 KB of stderr, for the error

    def console() -> None:
        while chunk := os.read(process.stderr.fileno(), 4096):
            tail.append(chunk)
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()

    passing = threading.Thread(target=console, daemon=True)
    passing.start()
    try:
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line:
                log(*rank_log_line(line))
        code = process.wait()
    finally:
        if process.poll() is None:
            process.terminate()  # torchrun passes it on to the ranks
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    passing.join(10)
    if code != 0:
        cause = root_cause(b"".join(tail).decode(errors="replace"))
        if re.search(r"\bStepTimedOut\b", cause):  # a rank ran past train.timeout_minutes:
            raise StepTimedOut(f"training timed out on a rank:\n{cause}")  # not retried, as alone
        raise RanksFailed(f"training failed on a rank (torchrun exit {code}):\n{cause}")


def train_distributed(dataset_dir: str | Path, out_dir: str | Path, model_config: ModelConfig,
                      train_config: TrainConfig, max_steps: int | None = None,
                      identity: str | None = None, tiling: TilingConfig | None = None) -> dict:
    """`train_step` on `train.distributed`'s processes: the same training and the same summary
    (with `world_size`), written by rank 0. The folder is claimed here, once, before any rank
    starts (resuming a DDP checkpoint of the same identity like any other)."""
    out = Path(out_dir)
    identity = identity or run_identity(dataset_fingerprint_of(dataset_dir), model_config,
                                        train_config, max_steps)
    claim_output(out, identity)
    if model_config.kind == "florence2" and model_config.checkpoint == TINY:
        tiny_base_for(dataset_dir, out / "tiny-base")  # once, here, before any rank loads it
    launch = out / LAUNCH_FILE
    launch.write_text(json.dumps({
        "dataset_dir": str(Path(dataset_dir).resolve()), "out_dir": str(out.resolve()),
        "model_config": model_config.model_dump(mode="json"),
        "train_config": train_config.model_dump(mode="json"), "max_steps": max_steps,
        "identity": identity, "tiling": tiling.model_dump(mode="json") if tiling else None}))
    distributed = train_config.distributed
    logger = run_logger()
    logger.info("starting %d training processes (%d per node on %d node%s) with torchrun",
                distributed.world_size, distributed.nproc_per_node, distributed.nnodes,
                "s" if distributed.nnodes > 1 else "")
    run_ranks(torchrun_command(distributed, 0, str(launch)), rank_environment(distributed),
              lambda level, message: logger.log(level, message))
    summary = json.loads((out / "train_summary.json").read_text())
    if summary.get("identity") != identity:
        raise RanksFailed(f"the ranks ended without writing this run's summary in {out}")
    return summary


def tiny_base_for(dataset_dir: str | Path, folder: Path) -> None:
    """The tiny Florence-2 the ranks load, built for the dataset's classes (train and
    validation: what `finetune_detector` builds it for) before they start. Built by the ranks
    themselves, under a file lock, the two-node test once found its config.json without a
    `model_type` on both ranks."""
    from tasks.training.selection import load_splits
    from tasks.training.tiny import build_tiny_florence, built_once

    train, validation = load_splits(dataset_dir)
    splits = [train] + ([validation] if validation is not None else [])
    labels = sorted({label for split in splits for row in split["labels"] for label in row})
    built_once(folder, lambda: build_tiny_florence(folder, labels))


def join_training(distributed: DistributedConfig, node_rank: int,
                  log: Callable[[int, str], None]) -> None:
    """This machine's part of a training started on node 0 (`defectflow train-node`)."""
    run_ranks(torchrun_command(distributed, node_rank, JOIN), rank_environment(distributed), log)
