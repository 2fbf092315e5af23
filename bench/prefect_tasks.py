"""Prefect's own cost per task run, which every night pays ~120 times at 100,000 images (the
image shards) whatever changed: a flow of 400 trivial tasks with defectflow's cache policy, run
twice (the second run all Cached), against the server at PREFECT_API_URL, on the prep runner.

    PREFECT_API_URL=... python -m bench.prefect_tasks   # prints one JSON line
"""

from __future__ import annotations

import json
import tempfile
import time

from prefect import flow, task

from tasks.core.caching import IMAGE_LIBRARIES, cache_policy
from tasks.nightly.runners import prep_threads

TASK_RUNS = 400


@task(cache_policy=cache_policy(IMAGE_LIBRARIES), persist_result=True)
def trivial(name: str, manifests_dir: str, store_root: str) -> str:
    return name


@flow(task_runner=prep_threads())
def many_tasks(run: str, folder: str) -> float:
    """Seconds for TASK_RUNS task runs, from the first submitted to the last result."""
    start = time.perf_counter()
    futures = trivial.map([f"{run}-{n}" for n in range(TASK_RUNS)], manifests_dir=folder,
                          store_root=folder)
    for future in futures:
        future.result()
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        run = str(time.time_ns())  # inputs no earlier run had: the first run computes
        computed = many_tasks(run, folder)
        cached = many_tasks(run, folder)
    print(json.dumps({"task_runs": TASK_RUNS, "computed_ms": 1000 * computed / TASK_RUNS,
                      "cached_ms": 1000 * cached / TASK_RUNS}))


if __name__ == "__main__":
    main()
