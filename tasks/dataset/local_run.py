"""The prepare steps called as the plain functions they are, without Prefect: for the tests
and the benchmarks (the prepare flow composes the same functions as tasks)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tasks.core.config import DatasetConfig
from tasks.core.home import Home
from tasks.core.progress import work_this_run
from tasks.dataset.augment import augment_step
from tasks.dataset.budget import budget_step
from tasks.dataset.loc_tokens import loc_targets_step
from tasks.dataset.publish import PublishOutput, publish_step
from tasks.dataset.split import split_step
from tasks.images.sample import image_step_config
from tasks.images.shard import process_images_step
from tasks.ingest.ingest import ingest_step, shard_step

T = TypeVar("T")


def prepare_steps(config: DatasetConfig, dataset_dir: str | Path, home: str | Path,
                  workers: int = 1, seconds: dict[str, float] | None = None,
                  ) -> tuple[PublishOutput, dict[str, int]]:
    """ingest -> shards (on `workers` threads) -> split -> target budget -> flips -> targets -> publish.
    Returns the publication and the work done (images decoded, reused, encoded); with
    `seconds`, each step's wall-clock time goes there, by step name (for the benchmarks)."""
    where = Home(Path(home))
    manifests, store = where.manifests, where.store

    def timed(name: str, step: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = step()
        if seconds is not None:
            seconds[name] = time.perf_counter() - start
        return result

    ingested = timed("ingest", lambda: ingest_step(config.source, config.label_rules, manifests,
                                                   config.labels, store))
    if ingested.fatal:
        raise ValueError(ingested.fatal)
    step = image_step_config(config)
    shards = timed("shard", lambda: shard_step(ingested.candidates, config.shard_size, manifests))
    with ThreadPoolExecutor(workers) as pool:
        outputs = timed("images", lambda: list(pool.map(
            lambda s: process_images_step(s, step, store, manifests), shards)))
    split = timed("split", lambda: split_step([o.kept for o in outputs], config.split, manifests))
    budget = timed("budget", lambda: budget_step(
        split.samples, config.targets.max_tokens, config.model.checkpoint, manifests,
        config.tiling, store, config.images.max_pixels, config.images.min_box_size))
    augmented, flips = timed("flips", lambda: augment_step(
        budget.rows, config.augment, config.images.max_pixels, str(store), manifests))
    targets = timed("targets", lambda: loc_targets_step(augmented, manifests, store))
    published = timed("publish", lambda: publish_step(targets, config.name, config.publish,
                                                      dataset_dir))
    return published, work_this_run([(o.counters, True) for o in outputs] + [(flips, True)])
