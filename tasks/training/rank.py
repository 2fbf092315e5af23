"""One rank of a distributed training: `python -m tasks.training.rank LAUNCH_FILE|--join`, started
by torchrun (see distributed.py). It runs the train step as one process would, the Trainer
doing DDP; rank 0's log lines go to its stdout for the launching step to log."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from tasks.core.config import ModelConfig, TilingConfig, TrainConfig
from tasks.training.distributed import (
    JOIN,
    LAUNCHER_ENV,
    TIMEOUT_ENV,
    end_with_launcher,
    rank_log_text,
)


class RankLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return rank_log_text(record.levelno, super().format(record))


def rank_logging(rank: int) -> None:
    """Rank 0 logs to stdout, one line a record; the other ranks keep quiet unless it is an
    error (they run the same code and would say everything once more)."""
    logger = logging.getLogger("defectflow")
    if rank == 0:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(RankLines("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        # Said by the DDP machinery on every run, about nothing the user can change.
        for noise in (r"barrier\(\): using the device under current context",
                      r".*is_gradient_checkpointing.* is deprecated"):
            warnings.filterwarnings("ignore", message=noise)
    else:
        logger.setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")


def launch_request(argument: str) -> dict:
    """What to train: the launch file on the flow's machine; on the others (`--join`), rank 0
    sends it once every process has joined."""
    import torch
    import torch.distributed as dist

    request = None if argument == JOIN else json.loads(Path(argument).read_text())
    if int(os.environ.get("GROUP_WORLD_SIZE", "1")) == 1:
        return request
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                            timeout=timedelta(seconds=int(os.environ.get(TIMEOUT_ENV, "600"))))
    shared = [request]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


@record  # torchrun's error report then carries this rank's traceback
def main() -> None:
    from tasks.training.train import train_step

    rank_logging(int(os.environ.get("RANK", "0")))
    if LAUNCHER_ENV in os.environ:
        end_with_launcher(int(os.environ[LAUNCHER_ENV]))
    request = launch_request(sys.argv[1])
    tiling = request["tiling"]
    train_step(request["dataset_dir"], request["out_dir"],
               ModelConfig.model_validate(request["model_config"]),
               TrainConfig.model_validate(request["train_config"]), request["max_steps"],
               request["identity"], TilingConfig.model_validate(tiling) if tiling else None)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()  # else NCCL warns at exit that resources may leak


if __name__ == "__main__":
    main()
