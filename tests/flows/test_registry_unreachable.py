"""A registry that cannot be asked, as a user meets it: a night fails (it never runs as the first
one) and its failure alert says "registry unreachable"; `status` says so and exits 1; against a
real `mlflow server`, an alias is read through its REST API as on SQLite, and a server that went
away is unreachable, never "no champion"."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.demo.sample_data import generate
from tasks.nightly.registry import (
    CHAMPION,
    RegistryUnreachable,
    champion_version,
    register_version,
    set_champion,
)
from tests.nightly.test_alerts import receiver  # noqa: F401 - the webhook fixture
from tests.support import demo_config


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_client_retries(monkeypatch):
    """MLflow's HTTP client would ride out a dead server for minutes: the fault reaches us."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def line_config(tmp_path: Path, tracking_uri: str, notify: str = "") -> Path:
    source = tmp_path / "source"
    generate(source, count=12, size=64, seed=3, troubles=False)
    path = tmp_path / "line.yaml"
    path.write_text(demo_config(source, name="unreachable")
                    + f"registry: {{tracking_uri: '{tracking_uri}'}}\n" + notify, encoding="utf-8")
    return path


@pytest.mark.usefixtures("prefect_server", "no_client_retries")
def test_a_night_whose_registry_is_away_fails_and_its_alert_says_so(tmp_path, receiver,  # noqa: F811
                                                                     monkeypatch):
    from flows.retrain import retrain
    from tasks.nightly.promotion import current_champion_task

    monkeypatch.setattr(current_champion_task, "retry_delay_seconds", [0, 0])
    url, received = receiver
    config = line_config(tmp_path, f"http://127.0.0.1:{closed_port()}",
                         f"notify: {{url: '{url}'}}\n")
    state = retrain(str(config), str(tmp_path / "work"), str(tmp_path / "home"),
                    return_state=True)
    assert state.is_failed()
    assert not (tmp_path / "work" / "runs").exists()  # nothing trained as a first night
    [message] = received
    assert message["title"].endswith("failed: registry unreachable"), message
    assert "nothing was promoted, skipped or deleted" in message["message"]


@pytest.mark.usefixtures("prefect_server", "no_client_retries")
def test_status_says_the_registry_is_unreachable_and_exits_1(tmp_path):
    config = line_config(tmp_path, f"http://127.0.0.1:{closed_port()}")
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "status", str(config),
                                      "--work", str(tmp_path / "work")])
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 1, result.output
    assert "champion registry unreachable" in said and "none yet" not in said.split("last")[0]


@pytest.fixture
def tracking_server(tmp_path):
    """A real MLflow tracking server (SQLite behind it, artifacts served), stopped at the end."""
    port = closed_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "served-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}", server
    if server.poll() is None:
        os.killpg(server.pid, 9)
        server.wait()


@pytest.mark.usefixtures("no_client_retries")
def test_a_tracking_server_answers_none_only_for_itself_and_away_is_unreachable(
        tmp_path, tracking_server):
    from mlflow import MlflowClient

    uri, server = tracking_server
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert champion_version(uri, "m") is None  # the server's own answer: no such model
    registered = register_version(uri, tmp_path / "unused", "m", model, {"coco": {"map50": 0.5}},
                                  {"dataset_fingerprint": "f" * 64})
    # its files went to the server, which serves them (a registry on another machine reads
    # no path of this one)
    assert registered["source"].startswith("mlflow-artifacts:") and not (tmp_path / "unused").exists()
    assert any((tmp_path / "served-artifacts").rglob("config.json"))
    assert champion_version(uri, "m") is None  # a model without the alias
    set_champion(uri, "m", 1, {"promoted": True})
    assert champion_version(uri, "m")["version"] == 1  # aliases come through the REST API
    MlflowClient(uri).delete_registered_model_alias("m", CHAMPION)
    assert champion_version(uri, "m") is None
    set_champion(uri, "m", 1, {"promoted": True})
    os.killpg(server.pid, 9)  # the server goes away: unreachable, not "none"
    server.wait()
    with pytest.raises(RegistryUnreachable, match="registry unreachable"):
        champion_version(uri, "m")
