"""`defectflow status` tells a monitor whether a line's last night failed (exit code 1) and what
its champion, next run, images and disk are; the night ends with retention, and `defectflow gc`
collects by hand, never what the newest prepare's Cached steps hand on."""

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.prepare import prepare
from flows.retrain import retrain
from tasks.core.config import load_config
from tasks.core.records import Rejection, write_manifest
from tasks.core.run_history import task_run_states
from tasks.demo.sample_data import generate
from tests.support import tiny_nightly_config

runner = CliRunner()
OLD = datetime.now().timestamp() - 3600
try:  # a pid no process can have
    DEAD = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
except OSError:
    DEAD = 2**22 + 1

BROKEN = """name: statusline
source: {{format: coco, images: {src}/images, annotations: {src}/broken.json}}
"""


def stray_manifest(home: Path, item: str) -> Path:
    """A manifest no prepare's result names (an old night's), last written an hour ago."""
    path = Path(write_manifest([Rejection(item=item, reason="stray")], home / "manifests",
                               "rejected").path)
    os.utime(path, (OLD, OLD))
    return path


def status(home: Path, config: Path, work: Path, *more: str):
    return runner.invoke(app, ["--home", str(home), "status", str(config), "--work", str(work), *more])


def test_status_names_the_deployment_as_serve_does(tmp_path):
    from flows.serve import deployment_name as served
    from tasks.nightly.status import deployment_name

    config = tmp_path / "c.yaml"
    config.write_text(BROKEN.format(src=tmp_path))
    assert deployment_name(load_config(config)) == served(load_config(config)) == "retrain-statusline"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_status_exits_1_after_a_failed_night_and_0_after_a_completed_one(tmp_path):
    source, home, work = tmp_path / "source", tmp_path / "home", tmp_path / "work"
    generate(source, count=20, size=64, seed=4, troubles=False)
    (source / "broken.json").write_text("{not json")
    config = tmp_path / "statusline.yaml"
    config.write_text(BROKEN.format(src=source))

    # Night 1 cannot read its source: status says so, and exits 1 for the monitor.
    assert retrain(str(config), str(work), str(home), return_state=True).is_failed()
    failed = status(home, config, work)
    assert failed.exit_code == 1, failed.output
    said = " ".join(failed.output.replace("│", " ").split())
    assert "last night Failed" in said and "source unreadable" in said, said
    assert "champion none yet" in said and "not served" in said
    found = json.loads(status(home, config, work, "--json").output)
    assert found[0]["failed"] and found[0]["last_night"]["state"] == "Failed"
    # Without --work: the work dir its nights ran in (`run --work`, the demo's), not
    # <home>/lines/<name> where no night of it ran.
    where = runner.invoke(app, ["--home", str(home), "status", str(config), "--json"])
    assert json.loads(where.output)[0]["work"] == str(work.resolve()), where.output

    # A served line: its next scheduled night is named.
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("retrain")
        deployment = client.create_deployment(flow_id=flow_id, name="retrain-statusline",
                                              parameters={"config_path": str(config.resolve())})
        client.create_flow_run_from_deployment(deployment, state=Scheduled(scheduled_time=tomorrow))

    # Before night 2: leftovers of a killed night and a manifest no prepare names.
    partial = work / "prepared" / f".dataset.partial-{DEAD}-abcdef12"
    (partial / "data").mkdir(parents=True)
    for path in (partial / "data", partial):
        os.utime(path, (OLD, OLD))
    stray = stray_manifest(home, "before-night-2")

    config.write_text(tiny_nightly_config("statusline", source, max_steps=2, eval_steps=2)
                      + "retention: {runs: 2}\n")
    night = retrain(str(config), str(work), str(home), return_state=True)
    assert night.is_completed(), night.message
    retention = night.result()["retention"]
    assert str(partial) in retention["leftovers"]["removed"] and not partial.exists()
    assert retention["skipped"] is None and retention["manifests"]["files"] >= 1
    assert not stray.exists()

    done = status(home, config, work)
    assert done.exit_code == 0, done.output
    said = " ".join(done.output.replace("│", " ").split())
    assert "last night Completed" in said and "champion v1 map" in said, said
    assert f"next run {tomorrow.strftime('%Y-%m-%d %H:%M')} UTC (retrain-statusline)" in said
    found = json.loads(status(home, config, work, "--json").output)[0]
    assert found["images"]["found"] == 20 and found["disk"]["work"] > 0
    assert found["disk"]["home"] > 0

    # By hand: gc collects another stray manifest, and nothing the newest prepare names: the
    # prepare after it finds every step Cached (a collected manifest would make one run again).
    stray = stray_manifest(home, "after-night-2")
    collected = runner.invoke(app, ["--home", str(home), "gc", str(config), "--work", str(work)])
    assert collected.exit_code == 0, collected.output
    assert "freed" in collected.output and not stray.exists()
    again = prepare(str(config), str(work / "prepared"), str(home), return_state=True)
    states = task_run_states(again.state_details.flow_run_id)
    steps = [state for name, state in states if not name.startswith(("report", "fingerprint"))]
    assert steps and set(steps) == {"Cached"}, states


def test_a_night_prefect_still_calls_running_whose_process_is_gone_is_a_crashed_night(tmp_path):
    from types import SimpleNamespace

    from tasks.nightly.status import killed

    work = tmp_path / "work"
    work.mkdir()
    night = SimpleNamespace(parameters={"work_dir": str(work)},
                            start_time=datetime.now(timezone.utc) - timedelta(minutes=5))
    assert not killed(night)  # no lock taken: nothing to judge by
    lock = work / ".retrain.lock"
    lock.write_text(str(DEAD))
    assert killed(night)
    lock.write_text(str(os.getpid()))
    assert not killed(night)  # its process is alive
    lock.write_text(str(DEAD))
    os.utime(lock, (OLD - 3600, OLD - 3600))
    assert not killed(night)  # an earlier night's lock: this one has not taken it yet


def test_gc_by_hand_waits_for_a_retrain_that_holds_the_work_dir(tmp_path):
    from tasks.nightly.promotion import work_dir_lock

    config, work = tmp_path / "statusline.yaml", tmp_path / "work"
    config.write_text(BROKEN.format(src=tmp_path))
    with work_dir_lock(work) as ours:
        assert ours
        refused = runner.invoke(app, ["--home", str(tmp_path / "home"), "gc", str(config),
                                      "--work", str(work)])
    assert refused.exit_code == 1, refused.output
    assert "a retrain holds" in refused.output and "Traceback" not in refused.output
