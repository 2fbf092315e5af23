"""Prep on a real Dask cluster: a scheduler and two workers started by their own command lines
(`dask scheduler`, `dask worker`), as on a site's machines, give the thread runner's dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.prepare import prepare
from tasks.core.config import load_config
from tasks.demo.sample_data import generate
from tasks.nightly.runners import prep_task_runner
from tasks.nightly.server import free_port
from tests.support import REPO, tiny_nightly_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]



@pytest.fixture
def dask_cluster(tmp_path):
    """`dask scheduler` + 2 `dask worker` processes; the workers reach this session's Prefect
    server (task runs report their states to it) and share its home."""
    from prefect.settings import PREFECT_API_URL

    dask = str(Path(sys.executable).parent / "dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    logs = [open(tmp_path / f"dask-{name}.log", "w") for name in ("scheduler", "w1", "w2")]
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port",
                                   address.rsplit(":", 1)[1], "--no-dashboard"],
                                  cwd=REPO, env=env, stdout=logs[0], stderr=subprocess.STDOUT)]
    processes += [subprocess.Popen([dask, "worker", address, "--nworkers", "1", "--nthreads", "1",
                                    "--no-dashboard", "--name", name],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
                  for name, log in (("w1", logs[1]), ("w2", logs[2]))]
    from distributed import Client

    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            yield address, client
    finally:
        for process in (*processes[1:], processes[0]):  # the workers, then their scheduler
            process.terminate()
            process.wait(30)
        for log in logs:
            log.close()


def test_prepare_on_a_scheduler_and_two_workers_gives_the_thread_runners_fingerprint(
        tmp_path, dask_cluster):
    address, client = dask_cluster
    source = tmp_path / "source"
    generate(source, count=20, size=48, seed=4)
    config = tmp_path / "c.yaml"
    config.write_text(tiny_nightly_config("nightly", source, 12, 4) + "shard_size: 4\n")
    threads = prepare(str(config), str(tmp_path / "a"), str(tmp_path / "home-a"))

    cluster_config = tmp_path / "d.yaml"
    cluster_config.write_text(config.read_text() + f"prep: {{runner: dask, dask_address: '{address}'}}\n")
    runner = prep_task_runner(load_config(cluster_config).prep)
    on_cluster = prepare.with_options(task_runner=runner)(str(cluster_config), str(tmp_path / "b"),
                                                          str(tmp_path / "home-b"))
    assert on_cluster["fingerprint"] == threads["fingerprint"]
    assert on_cluster["images"] == threads["images"] and on_cluster["work"] == threads["work"]
    # The shards ran in the two worker processes the command lines started.
    executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(executed) == 2 and all(count > 0 for count in executed.values()), executed
