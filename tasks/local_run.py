"""The prepare steps called as the plain functions they are, without Prefect: for the tests
and the benchmarks (the prepare flow composes the same functions as tasks)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tasks.augment import augment_step
from tasks.config import DatasetConfig
from tasks.ingest import ingest, make_shards
from tasks.loc_tokens import targets_step
from tasks.process import ImageStepConfig, process_shard_step
from tasks.publish import PublishOutput, publish
from tasks.split import split_step
from tasks.workdir import Home


def prepare_steps(config: DatasetConfig, dataset_dir: str | Path, home: str | Path,
                  workers: int = 1) -> PublishOutput:
    """ingest -> shards (on `workers` threads) -> split -> flips -> targets -> publish."""
    where = Home(Path(home))
    manifests, store = where.manifests, where.store
    ingested = ingest(config.source, config.labels, manifests)
    step = ImageStepConfig(grayscale=config.grayscale, images=config.images)
    shards = make_shards(ingested.candidates, config.shard_size, manifests)
    with ThreadPoolExecutor(workers) as pool:
        outputs = list(pool.map(lambda s: process_shard_step(s, step, store, manifests), shards))
    split = split_step([o.kept for o in outputs], config.split, manifests)
    augmented, _ = augment_step(split.samples, config.augment, config.images.max_pixels,
                                str(store), manifests)
    return publish(targets_step(augmented, manifests), config.name, config.publish, dataset_dir)
