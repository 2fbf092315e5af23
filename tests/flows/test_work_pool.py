"""The README's work-pool path: `prefect.yaml` deployed with Prefect's own CLI, a process
worker picks up a night and runs it to the end (the demo's deployment, on a line that uses the
tiny model: no download); the deployment carries the landing trigger."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.demo.sample_data import generate
from tests.support import REPO, logs_of, tiny_nightly_config

pytestmark = pytest.mark.slow


def prefect(*args: str, env: dict, timeout: int = 300) -> str:
    done = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout + done.stderr


@pytest.mark.scenario  # a worker: make scenarios
def test_a_process_worker_runs_a_night_of_the_prefect_yaml_deployment(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    generate(tmp_path / "source", count=30, seed=2, troubles=False)
    config = tmp_path / "demo.yaml"
    config.write_text(tiny_nightly_config("demo", tmp_path / "source", max_steps=2, eval_steps=2))
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=PREFECT_API_URL.value(), DEFECTFLOW_REPO=str(REPO),
               PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect-home"))
    prefect("work-pool", "create", "test-pool", "--type", "process", env=env)
    prefect("deploy", "--name", "retrain-demo", "--pool", "test-pool", env=env)
    started = prefect("deployment", "run", "retrain/retrain-demo",
                      "--param", f"config_path={config}", "--param", f"work_dir={tmp_path / 'w'}",
                      "--param", f"home={tmp_path / 'home'}", env=env)
    assert "Created flow run" in started, started
    prefect("worker", "start", "--pool", "test-pool", "--run-once", env=env, timeout=600)

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("retrain/retrain-demo")
        runs = client.read_flow_runs()
        night = next(run for run in runs if run.deployment_id == deployment.id)
        automations = client.read_resource_related_automations(
            f"prefect.deployment.{deployment.id}")
    assert night.state.is_completed(), night.state
    # The worker's process ran the night to the end: recorded, trained, its log in Prefect.
    recorded = json.loads((tmp_path / "w" / "last_success.json").read_text())
    assert recorded["model_version"] == 1
    trained = [json.loads(p.read_text()) for p in (tmp_path / "w" / "runs").glob("*/train_summary.json")]
    assert [t["global_step"] for t in trained] == [2]
    assert "started by hand (defectflow run, the demo, or a Run in Prefect)" in logs_of(night.id)
    assert [a.trigger.expect for a in automations] == [{"defectflow.images.landed"}]
    assert automations[0].trigger.match.model_dump()["prefect.resource.id"] == "defectflow.line.demo"
