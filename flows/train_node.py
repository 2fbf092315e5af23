"""train-node = this machine's part of a line's distributed training (`train.distributed.nnodes
> 1`), as a flow a work pool's worker on that machine can run (`prefect.yaml` has the recipe);
`defectflow train-node` is the same without Prefect."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.core.config import load_config
from tasks.training.distributed import join_training


@flow(name="train-node", log_prints=True)
def train_node(config_path: str, node_rank: int) -> None:
    """Join the training node 0's night starts, its ranks' lines in this run's log."""
    distributed = load_config(config_path).train.distributed
    if distributed is None or not 0 < node_rank < distributed.nnodes:
        raise ValueError(f"{config_path}: node rank {node_rank} is not one of the config's other "
                         "nodes (train.distributed.nnodes)")
    logger = get_run_logger()
    join_training(distributed, node_rank, lambda level, message: logger.log(level, message))
