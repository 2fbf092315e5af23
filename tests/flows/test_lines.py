"""Several production lines on one home, and `--home` deciding everything: each config its own
work dir (`<home>/lines/<name>`), one config file per name, champion copies keyed by registry and
checked by hash, Prefect's database the home's whatever PREFECT_HOME says."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.core.home import LineTaken, claim_line, resolve_home
from tasks.demo.sample_data import generate
from tasks.nightly.promotion import current_champion_task
from tasks.nightly.registry import (
    RegistryTarget,
    champion_version,
    embedded_tracking_uri,
    register_version,
    set_champion,
)
from tests.support import REPO, tiny_nightly_config

runner = CliRunner()



def line_config(folder: Path, name: str, source: Path) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(tiny_nightly_config(name, source, max_steps=4, eval_steps=4))
    return path


def without_prefect_settings() -> dict[str, str]:
    """The environment a person's shell gives a command: no test server, no test settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(REPO)  # this checkout, whatever the venv was installed from
    return env


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_two_configs_with_default_work_dirs_are_two_lines_each_with_its_own_champion(
        tmp_path, monkeypatch):
    # Two lines on the same images (say a detector and, later, another model of the same
    # plant): with one shared work dir the second read the first's baseline, "no new images".
    monkeypatch.chdir(tmp_path)  # where a relative default work dir would land
    source = tmp_path / "source"
    generate(source, count=12, size=64, seed=3, troubles=False)
    home = tmp_path / "home"
    for name in ("east", "west"):
        result = runner.invoke(app, ["--home", str(home), "run",
                                     str(line_config(tmp_path, name, source))])
        assert result.exit_code == 0, result.output
        assert "Completed" in result.output and "no new images" not in result.output, result.output
    tracking_uri = embedded_tracking_uri(home / "mlflow")
    for name in ("east", "west"):
        work = home / "lines" / name
        assert (work / "last_success.json").is_file() and (work / "prepared" / "dataset").is_dir()
        assert any((work / "runs").iterdir())
        champion = champion_version(tracking_uri, f"{name}-florence2")
        assert champion is not None and champion["version"] == 1, name
    assert not (tmp_path / "work").exists()  # nothing in the current folder


def test_a_second_config_with_the_same_name_in_one_home_is_refused_naming_both_files(
        tmp_path, monkeypatch):
    from flows.retrain import retrain

    monkeypatch.setattr(type(retrain), "serve", lambda flow, **kwargs: None)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # a server of the user's
    first, second = tmp_path / "a" / "plant.yaml", tmp_path / "b" / "plant.yaml"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text("name: plant\nsource: {format: voc, images: x, annotations: y}\n")
    home = tmp_path / "home"
    assert runner.invoke(app, ["--home", str(home), "serve", str(first)]).exit_code == 0
    assert (home / "lines" / "plant" / "config.json").is_file()
    for command in ("serve", "run"):
        refused = runner.invoke(app, ["--home", str(home), command, str(second)])
        assert refused.exit_code == 2, refused.output
        assert "already used" in refused.output and "Traceback" not in refused.output
    with pytest.raises(LineTaken) as taken:
        claim_line(resolve_home(home), "plant", second)
    message = str(taken.value)
    assert str(first.resolve()) in message and str(second.resolve()) in message
    # the first file keeps its line, and another home is another set of lines
    assert claim_line(resolve_home(home), "plant", first) == home / "lines" / "plant"
    assert claim_line(resolve_home(tmp_path / "other"), "plant", second).is_dir()


def test_a_champion_copy_that_differs_from_the_registered_files_is_downloaded_again(tmp_path):
    def registered(name: str, weights: bytes) -> RegistryTarget:
        model = tmp_path / name / "model"
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
        (model / "weights.bin").write_bytes(weights)
        target = RegistryTarget(tracking_uri=embedded_tracking_uri(tmp_path / name / "mlflow"),
                                model_name="plant-florence2")
        version = register_version(target.tracking_uri, tmp_path / name / "artifacts",
                                   target.model_name, model, {"coco": {"map": 0.5}}, {})
        set_champion(target.tracking_uri, target.model_name, version["version"], {})
        return target

    weights = bytes(range(256)) * 64
    here = registered("here", weights)
    copies = tmp_path / "work" / "champion"
    copy = Path(current_champion_task.fn(registry=here, download_to=str(copies))["model_dir"])
    assert (copy / "weights.bin").read_bytes() == weights

    (copy / "weights.bin").write_bytes(weights[:1000])  # a download cut short
    assert Path(current_champion_task.fn(registry=here, download_to=str(copies))["model_dir"]) == copy
    assert (copy / "weights.bin").read_bytes() == weights
    (copy / "config.json").unlink()  # a file lost
    current_champion_task.fn(registry=here, download_to=str(copies))
    assert (copy / "config.json").read_text() == "{}"

    # Version 1 of another registry (same model name) is another copy, not this one reused.
    there = registered("there", b"other weights")
    other = Path(current_champion_task.fn(registry=there, download_to=str(copies))["model_dir"])
    assert other != copy and (other / "weights.bin").read_bytes() == b"other weights"
    assert (copy / "weights.bin").read_bytes() == weights
    assert sorted(p.name for p in copies.iterdir()) == sorted([copy.parent.name, other.parent.name])


@pytest.mark.slow
def test_home_decides_the_prefect_database_over_an_exported_prefect_home(tmp_path):
    source = tmp_path / "source"
    generate(source, count=12, size=64, seed=3, troubles=False)
    config = line_config(tmp_path, "plant", source)
    home, elsewhere = tmp_path / "home", tmp_path / "exported-prefect-home"
    elsewhere.mkdir()
    env = {**without_prefect_settings(), "PREFECT_HOME": str(elsewhere)}
    done = subprocess.run([str(Path(sys.executable).parent / "defectflow"), "--home", str(home),
                           "run", str(config)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (elsewhere / "prefect.db").exists()
    with sqlite3.connect(home / "prefect" / "prefect.db") as database:
        runs = database.execute("SELECT flow.name, flow_run.state_type FROM flow_run "
                                "JOIN flow ON flow.id = flow_run.flow_id").fetchall()
    assert ("retrain", "COMPLETED") in runs, runs
    output = " ".join(done.stdout.split())
    assert f"Prefect server: a temporary local server on {home / 'prefect'}" in output, output
    assert (home / "lines" / "plant" / "last_success.json").is_file()



def wait_final(flow_run_id, seconds: float = 600):
    import time

    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            time.sleep(2)
    raise TimeoutError(f"flow run {flow_run_id} did not finish")


@pytest.mark.slow
def test_two_lines_served_at_once_share_the_homes_lasting_server(tmp_path, monkeypatch):
    import httpx
    from prefect.deployments import run_deployment

    from flows.deployment import served
    from flows.retrain import retrain
    from tasks.nightly.server import free_port, prefect_server, stop_home_server

    home = tmp_path / "home"
    configs = {}
    for seed, name in enumerate(("east", "west"), start=3):
        generate(tmp_path / name, count=12, size=64, seed=seed, troubles=False)
        configs[name] = line_config(tmp_path, name, tmp_path / name)
    defectflow = [str(Path(sys.executable).parent / "defectflow"), "--home", str(home)]
    env = without_prefect_settings()
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the served runs run this checkout's code
    started = subprocess.run([*defectflow, "server", "start", "--port", str(free_port())],
                             env=env, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        with prefect_server(home / "prefect") as api_url:  # found through <home>/prefect/server.json
            # A deployment of the same name left by an earlier serve with other parameters.
            retrain.to_deployment(name="retrain-east", parameters={
                "config_path": "/elsewhere/east.yaml", "work_dir": "/elsewhere", "home": "/x"}).apply()
            with served(configs["east"], home / "lines" / "east", str(home)) as east:
                runs = [run_deployment(east, timeout=0, as_subflow=False)]  # at once: not stale
                with served(configs["west"], home / "lines" / "west", str(home)) as west:
                    runs.append(run_deployment(west, timeout=0, as_subflow=False))
                    finished = [wait_final(run.id) for run in runs]
        for name, run in zip(("east", "west"), finished, strict=True):
            assert run.state.is_completed(), (name, run.state.message)
            assert run.parameters["work_dir"] == str(home / "lines" / name)
            assert run.parameters["config_path"] == str(configs[name])
            assert run.state.result()["train"]["global_step"] == 4
            assert (home / "lines" / name / "last_success.json").is_file()
            assert champion_version(embedded_tracking_uri(home / "mlflow"), f"{name}-florence2")
        # The server outlived both serves; a `run` finds it (no PREFECT_API_URL given) and says so.
        assert subprocess.run([*defectflow, "server", "status"], env=env, timeout=60).returncode == 0
        again = subprocess.run([*defectflow, "run", str(configs["east"])], env=env,
                               capture_output=True, text=True, timeout=300)
        output = " ".join(again.stdout.split())
        assert again.returncode == 0, output + again.stderr[-3000:]
        assert "trained nothing: no new images" in output and f"Prefect server: {api_url}" in output
        stopped = subprocess.run([*defectflow, "server", "stop"], env=env, timeout=120)
        assert stopped.returncode == 0 and not (home / "prefect" / "server.json").exists()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{api_url}/health", timeout=2)
    finally:
        stop_home_server(resolve_home(home))
