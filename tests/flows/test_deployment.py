"""The retrain deployment on a real Prefect server, as the demo and `serve` run it: a night is a
flow run of the deployment; a run that failed in train after a checkpoint, retried through the
API call the UI's Retry button makes, re-executes only train and what follows (the steps before
it come back Cached, the finished prepare subflow is not run again) and training resumes from its
checkpoint."""

import time

import pytest

from flows.deployment import run_night, served
from tasks.core.run_history import task_run_states
from tasks.demo.sample_data import generate
from tasks.nightly.server import free_port
from tasks.training.trainer import FAIL_ENV
from tests.flows.test_retrain import nightly_config
from tests.support import REPO, logs_of

pytestmark = pytest.mark.slow


def retry_like_the_ui(flow_run_id) -> None:
    """What the Prefect UI's Retry button sends for a failed flow run."""
    from prefect.client.orchestration import get_client
    from prefect.states import State, StateType

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, State(type=StateType.SCHEDULED,
                                                     name="AwaitingRetry",
                                                     message="Retry from the UI"), force=True)


def wait_final(flow_run_id, seconds: float = 300):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final() and run.state.name != "AwaitingRetry":
                return run
            time.sleep(2)
    raise TimeoutError("the retried run did not finish")


def test_a_night_is_a_deployment_run_and_retry_from_the_ui_resumes_training(tmp_path, monkeypatch):
    source = tmp_path / "source"
    generate(source, count=30, size=64, seed=7, troubles=False)
    config = tmp_path / "nightly.yaml"
    config.write_text(nightly_config(source))
    home = str(tmp_path / "home")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    flag = tmp_path / "fail-while-this-exists"
    flag.touch()
    monkeypatch.setenv(FAIL_ENV, f"4:{flag}")  # the served runs inherit it: fail while flag is
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # and run this checkout's code
    with served(config, tmp_path / "work", home, port=free_port()) as deployment:
        assert deployment == "retrain/retrain-nightly"
        failed = run_night(deployment)
        assert failed["state"].is_failed()
        trains = [s for name, s in failed["task_states"] if name.startswith("train")]
        assert trains == ["Failed"]
        flow_run_id = failed["state"].state_details.flow_run_id
        flag.unlink()
        retry_like_the_ui(flow_run_id)
        retried = wait_final(flow_run_id)
        assert retried.state.is_completed(), retried.state.message
        result = retried.state.result()
        assert result["train"]["resumed_from_step"] == 8 and result["train"]["global_step"] == 12
        states = task_run_states(flow_run_id)
        logs = logs_of(flow_run_id)  # while its server is up

    def runs_of(prefix: str) -> list[str]:
        return [state for name, state in states if name.startswith(prefix)]

    # The retry ran train again (resumed) and what follows; what came before it came back
    # Cached, and the prepare subflow, finished in the first attempt, was not run again.
    assert runs_of("train") == ["Failed", "Completed"]
    assert runs_of("what-is-new") == runs_of("current-champion") == ["Completed", "Cached"]
    assert runs_of("prepare-0") == ["Completed"]  # the subflow (prepare-story is a task)
    assert runs_of("prepare-story") == ["Completed", "Cached"]
    for step in ("ingest", "split", "target-budget", "augment", "loc-targets", "publish"):
        assert runs_of(step) == ["Completed"], step
    assert runs_of("evaluate") == runs_of("promote") == ["Completed"]
    # The runner's spawned run processes drop Prefect's routine state lines too.
    assert any(line.startswith("images: found") for line in logs), logs
    assert "Finished in state Completed()" not in logs
