"""Which Prefect task runner prep uses: threads here, or Dask (local cluster or a scheduler)."""

from __future__ import annotations

from tasks.core.config import PrepConfig


def prep_task_runner(prep: PrepConfig):
    if prep.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if prep.dask_address:
            return DaskTaskRunner(address=prep.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": prep.dask_workers,
                                              "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner()
