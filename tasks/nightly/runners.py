"""Which Prefect task runner prep uses: threads here, or Dask (local cluster or a scheduler)."""

from __future__ import annotations

import os

from prefect.task_runners import ThreadPoolTaskRunner

from tasks.core.config import PrepConfig


def prep_threads() -> ThreadPoolTaskRunner:
    """A thread runner with one thread per core for prep's shards. Prefect's default starts a
    thread per task: every shard at once, each holding its records and images while it waits
    for the GIL (Pillow encodes holding it), so peak memory grew with the number of shards,
    that is with the dataset (prep of 10,000 images: 1.3x the memory of 1,000)."""
    return ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1)


def prep_task_runner(prep: PrepConfig):
    if prep.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if prep.dask_address:
            return DaskTaskRunner(address=prep.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": prep.dask_workers,
                                              "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    return prep_threads()
