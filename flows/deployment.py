"""The retrain deployment, served for the length of a block, as a user serves it: a lasting
Prefect server (see `tasks/nightly/server.py`) and `defectflow serve` in a process of its own
(the deployment with its schedule, one run at a time, and the runner that executes its runs).
The demo runs its nights through it (`run_night`), so the UI lists the deployment, its schedule
and the nights under it. A deployment of the same name left by an earlier serve (another work
dir, another config file) is not accepted: the block starts once serve has given the deployment
this call's parameters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from flows.retrain import retrain
from flows.serve import deployment_name, deployment_parameters
from tasks.core.config import load_config
from tasks.core.run_history import task_run_states
from tasks.nightly.server import prefect_server, stop, wait_until


def _deployed_with(name: str, parameters: dict, since: datetime) -> bool:
    """Whether the deployment was (re)deployed after `since` with these parameters."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(name)
    except ObjectNotFound:
        return False
    return deployment.parameters == parameters and deployment.updated is not None \
        and deployment.updated >= since


@contextmanager
def served(config_path: Path, work: Path, home_root: str, port: int = 4200,
           timeout_s: float = 120) -> Iterator[str]:
    """`defectflow serve` for the block; yields the deployment's name (`retrain/retrain-<name>`).
    Serve starts quietly (the caller says where it serves) and looks for runs every second: the
    block triggers its runs and waits for them, where a nightly schedule can wait 10 s."""
    name = f"{retrain.name}/{deployment_name(load_config(config_path))}"
    parameters = deployment_parameters(config_path, work, home_root)
    with prefect_server(Path(home_root) / "prefect", port=port):
        since = datetime.now(timezone.utc)
        serve = subprocess.Popen([str(Path(sys.executable).parent / "defectflow"), "--home",
                                  home_root, "serve", str(config_path), "--work", str(work),
                                  "--quiet"],
                                 env={**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "1"})
        try:
            wait_until(lambda: _deployed_with(name, parameters, since), serve, timeout_s,
                       f"`defectflow serve` did not deploy {name} with {parameters}", interval_s=1)
            yield name
        finally:
            stop(serve, signal.SIGINT, timeout_s=60)  # as Ctrl-C: the schedule is paused


def run_night(deployment: str) -> dict:
    """One flow run of the deployment, waited for: as `run_retrain` returns it (final state,
    summary, every task run's final state)."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(deployment, timeout=None, poll_interval=2, as_subflow=False)
    return night_result(flow_run)


def landing_night(deployment: str, since: datetime, timeout_s: float = 600) -> dict:
    """The night the landing trigger starts (a run of the deployment with a `landed` parameter,
    created after `since`), waited for as `run_night` waits for its run."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        flow_run = None
        while flow_run is None or not flow_run.state.is_final():
            if flow_run is None and time.monotonic() > deadline:
                raise TimeoutError(f"no night of {deployment} started by the landing trigger "
                                   f"within {timeout_s:g} s")
            time.sleep(1)
            if flow_run is not None:
                flow_run = client.read_flow_run(flow_run.id)
                continue
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[deployment_id])))
            flow_run = next((run for run in runs if run.parameters.get("landed")
                             and run.created is not None and run.created >= since), None)
    return night_result(flow_run)


def night_result(flow_run) -> dict:
    """A finished night as `run_retrain` returns it: final state, summary, task run states."""
    state = flow_run.state
    summary = state.result(raise_on_failure=False) if state.is_completed() else None
    return {"state": state, "summary": summary if isinstance(summary, dict) else None,
            "task_states": task_run_states(flow_run.id)}
