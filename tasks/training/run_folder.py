"""What a run folder holds and may be trusted with: the identity of the run that wrote it
(resume only the same run's checkpoints) and its newest complete checkpoint."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tasks.core.caching import TRAINING_LIBRARIES, folder_hash, library_versions
from tasks.core.code_versions import closure_version
from tasks.core.config import ModelConfig, TrainConfig
from tasks.core.logs import run_logger

IDENTITY_FILE = "run_identity.json"
# The code that can change a checkpoint: training, scoring (it chooses the checkpoint) and what
# they import, never nightly/, predict/, evaluation/ or flows/. The config modules are left out
# (code_versions.CONFIG_MODULES): the model and train configs enter the identity as values.
CHECKPOINT_CODE = ("training", "scoring")


def run_identity(fingerprint: str, model_config: ModelConfig, train_config: TrainConfig,
                 max_steps: int | None) -> str:
    """What a run folder's checkpoints were trained on: the dataset fingerprint, the model and
    train config, the base checkpoint (its files' hash when it is a local folder, e.g. a warm
    start from the champion), the code that can change a checkpoint (CHECKPOINT_CODE), the
    training libraries' versions and the number of processes training together."""
    base = Path(model_config.checkpoint)
    data = {
        "dataset_fingerprint": fingerprint,
        "model": model_config.model_dump(mode="json"),
        # Where the nodes meet and how long they wait changes no weight; how many train together
        # does (the global batch).
        "train": train_config.model_dump(mode="json", exclude={"distributed"}),
        "world_size": train_config.world_size,
        "max_steps": max_steps,
        "base_checkpoint_files": folder_hash(base) if base.is_dir() else None,
        "code_version": closure_version(CHECKPOINT_CODE),
        "libraries": library_versions(TRAINING_LIBRARIES),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def claim_output(out: Path, identity: str) -> bool:
    """Make `out` this run's folder. Its checkpoints are resumed only when they were written by a
    run of the same identity; any others (another dataset, config, base or code) are removed
    with the tiny base built for them, and the log says so. True when resuming is allowed."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / IDENTITY_FILE
    previous = json.loads(marker.read_text())["identity"] if marker.is_file() else None
    if previous == identity:
        return True
    stale = [out / name for name in ("checkpoints", "tiny-base", "model", "merged")
             if (out / name).exists()]
    if stale:
        run_logger().warning(
            "starting fresh in %s: its checkpoints were written by another run (different "
            "dataset, config, base checkpoint or code), so they are not resumed", out)
    for path in stale:
        shutil.rmtree(path)
    (out / "train_summary.json").unlink(missing_ok=True)
    marker.write_text(json.dumps({"identity": identity}))
    return False


def is_trained(out_dir: str | Path, identity: str) -> bool:
    """`out_dir` holds a finished run of this identity (its summary and its model folder)."""
    summary = Path(out_dir) / "train_summary.json"
    if not summary.is_file():
        return False
    done = json.loads(summary.read_text())
    return done.get("identity") == identity and Path(done.get("model_dir", "")).is_dir()


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete checkpoint. The Trainer writes a checkpoint's files one after the
    other, its trainer_state.json last; a process killed before that (or a DDP rank stopped
    while rank 0 was still saving) leaves a folder the Trainer would resume from all the same,
    missing the optimizer or the step. Such folders are removed, and the log says so."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = sorted((int(path.name.rsplit("-", 1)[1]), path) for path in folder.glob("checkpoint-*")
                   if path.is_dir() and path.name.rsplit("-", 1)[1].isdigit())
    for _, path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            run_logger().warning("%s was not saved to the end (no trainer state): removed, not "
                                 "resumed", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


def resume_checkpoint(output_dir: str | Path) -> str | None:
    """`last_checkpoint`, decided once for a whole training: under DDP rank 0 looks (and alone
    removes incomplete checkpoints) and tells the other ranks, which never look themselves: on
    shared storage with attribute caching each rank could see another newest checkpoint, and
    resume from another step."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return last_checkpoint(output_dir)
    chosen = [last_checkpoint(output_dir) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(chosen, src=0)
    return chosen[0]
