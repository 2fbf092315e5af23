"""`defectflow serve` without PREFECT_API_URL: it starts the home's own Prefect server, deploys
the retrain flow there on the config's schedule, and the server's scheduler books its runs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tasks.nightly.server import free_port
from tests.support import REPO

pytestmark = pytest.mark.slow


def api(port: int, path: str, body: dict | None = None):
    url = f"http://127.0.0.1:{port}/api{path}"
    response = httpx.post(url, json=body or {}, timeout=5) if body is not None else \
        httpx.get(url, timeout=5)
    response.raise_for_status()
    return response.json()


def wait_for(check, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = check()
            if found:
                return found
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return None


def test_serve_without_an_api_url_schedules_runs_on_the_homes_server(tmp_path):
    config = tmp_path / "plant.yaml"
    config.write_text("name: plant\nsource: {format: voc, images: x, annotations: y}\n"
                      "schedule: {cron: '*/5 * * * *', timezone: UTC}\n")
    port, home = free_port(), tmp_path / "home"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PREFECT_")}  # no API URL, no test settings
    env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "2"  # book runs at once
    env["PYTHONPATH"] = str(REPO)  # this checkout, whatever the venv was installed from
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "defectflow"), "--home", str(home), "serve",
         str(config), "--work", str(tmp_path / "w"), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # as a script's background job starts it: SIGINT ignored; Ctrl-C must stop it all the same
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    stopped_by_ctrl_c = False
    try:
        deployment = wait_for(lambda: api(port, "/deployments/name/retrain/retrain-plant"), 120)
        assert deployment, "no deployment on the home's server"
        assert deployment["schedules"][0]["schedule"]["cron"] == "*/5 * * * *"
        assert deployment["global_concurrency_limit"] is None  # the night takes the line's slot:
        assert [(limit["name"], limit["limit"]) for limit in api(
            port, "/v2/concurrency_limits/filter", {})] == [("defectflow-night-retrain-plant", 1)]
        booked = wait_for(lambda: api(port, "/flow_runs/filter", {
            "deployments": {"id": {"any_": [deployment["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}), 60)
        assert booked, "the scheduler booked no run"
        assert (home / "prefect" / "prefect.db").is_file()  # the home's database, as `make ui`'s
        # Prefect's own CLI, as a person monitoring the nights uses it, against the same server
        # (3.8.8 with fastapi 0.154 answered the list commands 422).
        started = prefect_cli(port, "deployment", "run", "retrain/retrain-plant")
        assert "Created flow run" in started, started
        assert "retrain/retrain-plant" in prefect_cli(port, "deployment", "ls")
        runs = prefect_cli(port, "flow-run", "ls")
        assert "retrain" in runs and ("SCHEDULED" in runs or "PENDING" in runs
                                      or "RUNNING" in runs or "FAILED" in runs), runs
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            output = serve.communicate(timeout=120)[0]
            stopped_by_ctrl_c = True
        except subprocess.TimeoutExpired:
            serve.kill()
            output = serve.communicate()[0]
    assert stopped_by_ctrl_c, "serve ignored SIGINT and had to be killed"
    assert "cannot schedule" not in output, output
    # (a bound, not a timing: a loaded 2-core machine takes a while to stop uvicorn)
    assert wait_for(lambda: not _listening(port), 120), "the server outlived serve"


def prefect_cli(port: int, *args: str) -> str:
    """`prefect <args>` against the server on `port`; its output (it must succeed)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=f"http://127.0.0.1:{port}/api", COLUMNS="200")
    done = subprocess.run([str(Path(sys.executable).parent / "prefect"), *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1)
        return True
    except httpx.HTTPError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_a_killed_serve_leaves_no_server_behind(tmp_path):
    config = tmp_path / "plant.yaml"
    config.write_text("name: plant\nsource: {format: voc, images: x, annotations: y}\n")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(REPO)
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "defectflow"), "--home", str(tmp_path / "home"),
         "serve", str(config), "--work", str(tmp_path / "w"), "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: api(port, "/deployments/name/retrain/retrain-plant"), 120)
    finally:
        serve.kill()  # SIGKILL: no handler, no finally block runs in serve
        serve.wait()
    assert wait_for(lambda: not _listening(port), 60), "an orphan server still holds the port"
