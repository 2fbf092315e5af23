"""Land -> event -> run, on a real served deployment: `defectflow serve` watches the source, a
batch of labelled images becomes a `defectflow.images.landed` event, and the deployment's trigger
starts a night that names the event; batches landing during a night make one more night after
it; a batch below `min_new_images` starts nothing."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.core.processes import process_alive
from tasks.demo.sample_data import generate
from tasks.nightly.landing import LANDED_EVENT, WATCH_STATE
from tasks.nightly.liveness import ZOMBIE_AUTOMATION, lock_holder, work_dir_held
from tasks.nightly.server import free_port
from tests.flows.test_serve import api, wait_for
from tests.support import REPO, tiny_nightly_config

pytestmark = pytest.mark.slow
QUIET_S = 4


def night_runs(port: int, deployment_id: str) -> list[dict]:
    """The deployment's flow runs other than the cron's booked ones, oldest first."""
    runs = api(port, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}},
                                           "sort": "EXPECTED_START_TIME_ASC"})
    return [run for run in runs if not run["auto_scheduled"]]


def landing_source(tmp_path: Path, count: int) -> tuple[list[str], Path, Callable[[list[str]], None]]:
    """Labelled images made aside, an empty source, and `land(stems)` copying some in (each
    image with its XML)."""
    made, source = tmp_path / "made", tmp_path / "source"
    generate(made, count=count, seed=3, troubles=False)
    (source / "images").mkdir(parents=True)
    (source / "annotations").mkdir()

    def land(batch: list[str]) -> None:
        for stem in batch:
            image = next((made / "images").glob(f"{stem}.*"))
            shutil.copy(image, source / "images")
            shutil.copy(made / "annotations" / f"{stem}.xml", source / "annotations")

    return sorted(p.stem for p in (made / "annotations").glob("*.xml")), source, land


def serve_env(**more: str) -> dict[str, str]:
    """A served line's environment: none of this session's Prefect settings (serve finds its
    home's server itself), the repository importable, the runner polling every second."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    return {**env, "PYTHONPATH": str(REPO), "PREFECT_RUNNER_POLL_FREQUENCY": "1", **more}


def stopped(serve: subprocess.Popen) -> str:
    """Ctrl-C to a served line (started in its own session); after 2 minutes its whole process
    group is killed (its own Prefect server and a night would hold the output pipe open and
    outlive it); what it printed."""
    serve.send_signal(signal.SIGINT)
    try:
        return serve.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        os.killpg(serve.pid, signal.SIGKILL)
        return serve.communicate()[0]


def served_config(tmp_path: Path, source: Path, steps: int, quiet_s: int, min_new: int) -> Path:
    """A served line's config: the tiny model, a cron that never comes, the landing trigger."""
    config = tmp_path / "plant.yaml"
    config.write_text(tiny_nightly_config("plant", source, max_steps=steps, eval_steps=steps)
                      + "schedule: {cron: '0 0 1 1 *'}\n"
                      f"trigger: {{quiet_seconds: {quiet_s}, min_new_images: {min_new}}}\n")
    return config


def lasting_server(home: Path, port: int, env: dict[str, str]) -> Callable[[str], None]:
    """`server("start")` / `server("stop")`: the home's lasting Prefect server, on `port`."""
    defectflow = str(Path(sys.executable).parent / "defectflow")

    def server(command: str) -> None:
        subprocess.run([defectflow, "--home", str(home), "server", command,
                        *(["--port", str(port)] if command == "start" else [])],
                       env=env, check=True, capture_output=True, timeout=180)

    return server


def run_log(port: int, flow_run_id: str) -> list[str]:
    return [log["message"] for log in api(port, "/logs/filter", {
        "logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})]


def test_labelled_images_landing_start_one_night_per_batch_and_one_after_a_night(tmp_path):
    stems, source, land = landing_source(tmp_path, 60)
    land(stems[:30])  # there before serve: the watch does not count them
    config = served_config(tmp_path, source, 2, QUIET_S, 5)
    port, home = free_port(), tmp_path / "home"
    env = serve_env()
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "defectflow"), "--home", str(home), "serve",
         str(config), "--work", str(tmp_path / "w"), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        deployment = wait_for(lambda: api(port, "/deployments/name/retrain/retrain-plant"), 120)
        assert deployment, "no deployment on the home's server"
        automations = wait_for(lambda: api(port, "/automations/filter", {}), 30)
        assert sorted(a["name"] for a in automations) == sorted([ZOMBIE_AUTOMATION, next(
            a["name"] for a in automations if a["trigger"]["expect"] == [LANDED_EVENT])])
        time.sleep(3)  # the watch lists the source once started

        land(stems[30:35])
        landed_at = time.monotonic()
        first = wait_for(lambda: night_runs(port, deployment["id"]), QUIET_S + 30)
        assert first, f"no night started within {QUIET_S + 30} s of 5 labelled images landing"
        assert time.monotonic() - landed_at >= QUIET_S  # not before the source was quiet
        assert first[0]["parameters"]["landed"]["images"] == 5

        # Two more batches while night 1 runs: one more night after it, not two.
        assert wait_for(lambda: api(port, f"/flow_runs/{first[0]['id']}")["state_type"]
                        == "RUNNING", 60)
        land(stems[35:41])
        time.sleep(QUIET_S + 2)
        land(stems[41:47])
        night1 = wait_for(lambda: api(port, f"/flow_runs/{first[0]['id']}")["state_type"]
                          in ("COMPLETED", "FAILED", "CRASHED") and first[0], 300)
        assert api(port, f"/flow_runs/{night1['id']}")["state_type"] == "COMPLETED"
        second = wait_for(lambda: night_runs(port, deployment["id"])[1:], QUIET_S + 30)
        assert second, "the batches that landed during night 1 started no night after it"
        assert second[0]["parameters"]["landed"]["images"] == 12
        assert wait_for(lambda: api(port, f"/flow_runs/{second[0]['id']}")["state_type"]
                        == "COMPLETED", 300)
        logged = run_log(port, second[0]["id"])
        assert any(line.startswith("started by the event defectflow.images.landed")
                   and "12 labelled images landed" in line for line in logged), logged[:5]

        land(stems[47:49])  # 2 < min_new_images: nothing starts
        time.sleep(QUIET_S + 15)
        assert len(night_runs(port, deployment["id"])) == 2
    finally:
        output = stopped(serve)
    assert output.count("defectflow.images.landed sent") == 2, output[-3000:]


@pytest.mark.scenario  # 3 minutes: make scenarios
def test_a_killed_night_is_crashed_by_prefects_heartbeat_automation_and_frees_its_slot(tmp_path):
    """A night SIGKILLed: its heartbeats stop, Prefect's zombie-flow automation (which serve
    keeps on the home's server) marks it Crashed, the server's repossessor takes back the slot
    whose lease it no longer renews, and the next landing starts a night. Heartbeats every
    30 s (Prefect's shortest), the slot's lease 90 s."""
    stems, source, land = landing_source(tmp_path, 12)
    work = tmp_path / "w"
    config = served_config(tmp_path, source, 400, 2, 3)
    port, home = free_port(), tmp_path / "home"
    env = serve_env(PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "defectflow"), "--home", str(home), "serve",
         str(config), "--work", str(work), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        deployment = wait_for(lambda: api(port, "/deployments/name/retrain/retrain-plant"), 120)
        assert deployment and wait_for(lambda: [a for a in api(port, "/automations/filter", {})
                                                if a["name"] == ZOMBIE_AUTOMATION], 30)
        time.sleep(3)
        land(stems[:4])
        first = wait_for(lambda: night_runs(port, deployment["id"]), 120)
        assert first, "the landing started no night"

        def night_pid():  # the night's process, as its work dir's lock names it
            holder = lock_holder(work)  # None: not taken yet
            return holder[0] if holder and holder[0] != serve.pid else None

        pid = wait_for(night_pid, 120)
        assert pid, "night 1 never took its work dir's lock"
        os.kill(pid, signal.SIGKILL)
        crashed = wait_for(lambda: api(port, f"/flow_runs/{first[0]['id']}")["state_type"]
                           == "CRASHED", 240)
        assert crashed, "the killed night was never marked Crashed"
        land(stems[4:8])
        second = wait_for(lambda: night_runs(port, deployment["id"])[1:], 120)
        assert second, "the landing after the crash started no night"

        def past_the_slot():  # night 2 takes its work dir only once it holds the line's slot
            holder = lock_holder(work)
            return (holder is not None and holder[0] != pid and work_dir_held(work)) or api(
                port, f"/flow_runs/{second[0]['id']}")["state_type"] == "COMPLETED"

        assert wait_for(past_the_slot, 240), "night 2 never got the slot"
    finally:
        stopped(serve)


def test_a_run_stuck_pending_holds_batches_back_only_while_it_may_be_starting():
    """A run Pending for longer than a night takes to start (its worker died) holds nothing
    back: else every batch would wait for it for good."""
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from prefect.client.schemas.objects import StateType

    from flows.landing import holds_batches
    from tasks.nightly.landing import STARTING_S

    now = datetime.now(timezone.utc)

    def pending(for_s: float):
        return SimpleNamespace(state_type=StateType.PENDING,
                               state=SimpleNamespace(timestamp=now - timedelta(seconds=for_s)))

    assert holds_batches(pending(30), now)
    assert not holds_batches(pending(STARTING_S + 1), now)
    due = SimpleNamespace(state_type=StateType.SCHEDULED, expected_start_time=now + timedelta(seconds=10))
    later = SimpleNamespace(state_type=StateType.SCHEDULED, expected_start_time=now + timedelta(hours=5))
    assert holds_batches(due, now) and not holds_batches(later, now)


def test_a_source_folder_made_later_or_made_again_is_watched(tmp_path, monkeypatch):
    """No source folder when the watch starts: it waits for one. The folders made, then
    deleted and made again with new labelled images (a sync tool, `rm -rf && cp`): each batch is
    announced (before, the watch returned at once, or kept watching the deleted folder)."""
    import threading

    import flows.landing as landing
    from tasks.core.config import load_config

    made = tmp_path / "made"
    generate(made, count=6, size=48, seed=2, troubles=False)
    source = tmp_path / "source"
    config_path = tmp_path / "line.yaml"
    config_path.write_text(
        f"name: later\nsource: {{format: voc, images: {source / 'images'}, "
        f"annotations: {source / 'annotations'}}}\ntrigger: {{quiet_seconds: 1, min_new_images: 2}}\n")
    config = load_config(config_path)
    announced = []
    monkeypatch.setattr(landing, "night_running", lambda deployment, work=None: False)
    monkeypatch.setattr(landing, "announce", lambda config, batch: announced.append(batch.images))
    stop = threading.Event()
    watcher = threading.Thread(target=landing.watch_landings, args=(config, "retrain/x", stop, 0.2))
    watcher.start()

    def land(stems: list[str]) -> None:
        (source / "images").mkdir(parents=True, exist_ok=True)
        (source / "annotations").mkdir(parents=True, exist_ok=True)
        for stem in stems:
            image = next((made / "images").glob(f"{stem}.*"))
            shutil.copy(image, source / "images" / image.name)
            shutil.copy(made / "annotations" / f"{stem}.xml", source / "annotations")

    def announced_within(count: int, seconds: float = 30) -> bool:
        deadline = time.monotonic() + seconds
        while len(announced) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return len(announced) >= count

    try:
        stems = sorted(p.stem for p in (made / "annotations").glob("*.xml"))
        time.sleep(1)  # the watch has started, with no folder there
        land(stems[:3])
        assert announced_within(1), "the folders made after the watch started were not watched"
        assert len(announced[0]) == 3
        shutil.rmtree(source)  # deleted and made again, with new labelled images
        land(stems[3:6])
        assert announced_within(2), "the folders made again were not watched"
        assert sorted(Path(p).stem for p in announced[1]) == stems[3:6]
    finally:
        stop.set()
        watcher.join(30)


@pytest.mark.usefixtures("prefect_server")
def test_a_batch_whose_event_was_lost_is_sent_again_until_prefect_has_it(tmp_path):
    """An event the server did not take (away): the batch stays pending in the work dir, a
    restarted watch finds it, and it is sent again, under the same id, until Prefect's own
    events have it."""
    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.landing as landing
    from tasks.core.config import load_config
    from tasks.nightly.landing import WATCH_STATE, LandingWatch

    made = tmp_path / "made"
    generate(made, count=3, size=48, seed=4, troubles=False)
    source, work = tmp_path / "source", tmp_path / "work"
    config_path = tmp_path / "line.yaml"
    config_path.write_text(
        f"name: lost\nsource: {{format: voc, images: {source / 'images'}, "
        f"annotations: {source / 'annotations'}}}\ntrigger: {{quiet_seconds: 1, min_new_images: 2}}\n")
    config = load_config(config_path)
    (source / "images").mkdir(parents=True)
    (source / "annotations").mkdir()
    watch = LandingWatch.starting_now(config.source, config.trigger, work / WATCH_STATE, config.name)
    for image in (made / "images").iterdir():
        shutil.copy(image, source / "images")
    for xml in (made / "annotations").iterdir():
        shutil.copy(xml, source / "annotations")
    watch.changed(0)
    assert len(watch.batch(5, lambda: False).images) == 3
    [event] = watch.pending

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}), \
            pytest.raises(httpx.TransportError):  # no server there: said, not "sent"
        landing.send_pending(config, "retrain/retrain-lost", watch, {}, now=10)
    assert watch.pending == [event]

    restarted = LandingWatch.starting_now(config.source, config.trigger, work / WATCH_STATE,
                                          config.name)  # serve killed and started again
    assert restarted.pending == [event] and restarted.seen == watch.seen
    sent: dict[str, float] = {}
    deadline = time.monotonic() + 60
    while restarted.pending:
        assert time.monotonic() < deadline, "Prefect never had the event"
        landing.send_pending(config, "retrain/retrain-lost", restarted, sent, time.monotonic())
        time.sleep(1)
    assert landing.prefect_has(event["id"], "retrain/retrain-lost")
    assert LandingWatch.starting_now(config.source, config.trigger, work / WATCH_STATE).pending == []


def test_a_served_line_watches_its_source_folders_deleted_and_made_again(tmp_path):
    """A real serve on the home's lasting server: the source folders deleted and made again
    with new labelled images (a sync tool: rm -rf, then copy) start a night."""
    stems, source, land = landing_source(tmp_path, 16)
    config = served_config(tmp_path, source, 2, QUIET_S, 3)
    port, home = free_port(), tmp_path / "home"
    env = serve_env()
    defectflow = str(Path(sys.executable).parent / "defectflow")
    server = lasting_server(home, port, env)

    server("start")
    serve = subprocess.Popen([defectflow, "--home", str(home), "serve", str(config), "--work",
                              str(tmp_path / "w")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deployment = wait_for(lambda: api(port, "/deployments/name/retrain/retrain-plant"), 120)
        assert deployment, "no deployment on the home's server"
        time.sleep(3)
        shutil.rmtree(source)  # a sync tool: rm -rf, then copy again
        (source / "images").mkdir(parents=True)
        (source / "annotations").mkdir()
        land(stems[:4])
        first = wait_for(lambda: night_runs(port, deployment["id"]), QUIET_S + 60)
        assert first, "the folders made again started no night"
        assert first[0]["parameters"]["landed"]["images"] == 4
        assert wait_for(lambda: api(port, f"/flow_runs/{first[0]['id']}")["state_type"]
                        == "COMPLETED", 300)
    finally:
        output = stopped(serve)
        server("stop")
        print(output[-4000:])  # serve's console, shown when the test fails


@pytest.mark.scenario
def test_a_batch_landing_while_the_server_is_away_or_serve_is_killed_starts_exactly_one_night(
        tmp_path):
    """A real serve on the home's lasting server. The server stopped while a batch lands and
    started again: that batch starts exactly one night. Then serve killed while it holds a
    batch (the server away, so it could not be sent) and both started again: exactly one
    night for it too (what the watch saw is kept in the work dir: the batch is everything
    since, looked at once the folders are quiet)."""
    stems, source, land = landing_source(tmp_path, 12)
    config = served_config(tmp_path, source, 2, QUIET_S, 3)
    work = tmp_path / "w"
    port, home = free_port(), tmp_path / "home"
    env = serve_env()
    defectflow = str(Path(sys.executable).parent / "defectflow")
    server = lasting_server(home, port, env)

    def serve_line() -> subprocess.Popen:
        return subprocess.Popen([defectflow, "--home", str(home), "serve", str(config),
                                 "--work", str(work)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def one_night_for(batch: list[str], nights_before: int, deployment_id: str) -> None:
        started = wait_for(lambda: night_runs(port, deployment_id)[nights_before:], 150)
        assert started, f"the batch {batch[0]}.. started no night"
        assert started[0]["parameters"]["landed"]["images"] == len(batch)
        assert wait_for(lambda: api(port, f"/flow_runs/{started[0]['id']}")["state_type"]
                        == "COMPLETED", 300)
        time.sleep(QUIET_S + 20)  # a second night for it would have started by now
        assert len(night_runs(port, deployment_id)) == nights_before + 1

    def watch_saw(stem: str) -> bool:  # what the watch kept in the work dir counts the image
        return any(stem in path for path in json.loads((work / WATCH_STATE).read_text())["seen"])

    server("start")
    serve = serve_line()
    try:
        deployment = wait_for(lambda: api(port, "/deployments/name/retrain/retrain-plant"), 120)
        assert deployment, "no deployment on the home's server"
        time.sleep(3)

        server("stop")  # away while a batch lands: the watch cannot ask whether a night runs
        land(stems[:4])
        time.sleep(QUIET_S + 10)
        server("start")
        one_night_for(stems[:4], 0, deployment["id"])

        server("stop")
        land(stems[4:8])
        time.sleep(QUIET_S + 10)
        assert not watch_saw(stems[4]), "the watch took a batch it could not announce"
        os.killpg(serve.pid, signal.SIGKILL)  # serve killed while it holds the batch
        serve.communicate()
        server("start")
        serve = serve_line()
        one_night_for(stems[4:8], 1, deployment["id"])
    finally:
        output = stopped(serve)
        server("stop")
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.scenario
def test_a_live_night_marked_crashed_keeps_its_work_dir_and_result(tmp_path):
    """A live night silent for longer than three heartbeats (its process frozen: SIGSTOP, as
    a machine swapping or a VM paused): Prefect's zombie automation marks it Crashed and its
    slot goes back, though it is alive. A batch that lands meanwhile must not start a second
    night on the work dir while the first one's process holds it; the first night, let go
    on, ends Completed (its result kept), and then the batch starts one night."""
    stems, source, land = landing_source(tmp_path, 12)
    config = served_config(tmp_path, source, 1500, 2, 3)
    work = tmp_path / "w"
    port, home = free_port(), tmp_path / "home"
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "defectflow"), "--home", str(home), "serve",
         str(config), "--work", str(work), "--port", str(port)],
        env=serve_env(PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    pid = None
    try:
        deployment = wait_for(lambda: api(port, "/deployments/name/retrain/retrain-plant"), 120)
        assert deployment, "no deployment on the home's server"
        time.sleep(3)
        land(stems[:4])
        started = wait_for(lambda: night_runs(port, deployment["id"]), 120)
        assert started, "the landing started no night"
        night1 = started[0]
        # Frozen as soon as it holds its work dir (in prepare): resumed, it still has minutes to
        # run, past its slot lease's renewal. (Holding the deployment's own limit, Prefect's
        # engine stopped it there: "lease renewal failed", a spurious 12 h TaskRunTimeoutError.)
        assert wait_for(lambda: work_dir_held(work), 120), "night 1 never took its work dir"
        pid = lock_holder(work)[0]
        os.kill(pid, signal.SIGSTOP)  # alive, and silent
        frozen_at = time.monotonic()
        land(stems[4:8])
        crashed = wait_for(lambda: api(port, f"/flow_runs/{night1['id']}")["state_type"]
                           == "CRASHED", 3 * 30 + 60)
        assert crashed, "the automation never marked the silent night Crashed"
        # The batch is complete, Prefect says no night runs. Frozen for 240 s: past any lease
        # the night holds (the deployment's own is renewed every 225 s), so it meets the lost
        # lease at once when let go, with its training still to do.
        time.sleep(max(10.0, frozen_at + 240 - time.monotonic()))
        os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 600
        while (lock_holder(work) or (0,))[0] == pid and work_dir_held(work):  # night 1 holds its work
            # dir (its process lingers a moment after it lets go: then the batch may go)
            assert len(night_runs(port, deployment["id"])) == 1, "a second night started"
            assert time.monotonic() < deadline, "night 1 never ended"
            time.sleep(2)
        assert wait_for(lambda: api(port, f"/flow_runs/{night1['id']}")["state_type"]
                        == "COMPLETED", 60), "the live night's result was lost"
        after = wait_for(lambda: night_runs(port, deployment["id"])[1:], 120)
        assert after and after[0]["parameters"]["landed"]["images"] == 4
        assert wait_for(lambda: api(port, f"/flow_runs/{after[0]['id']}")["state_type"]
                        in ("RUNNING", "COMPLETED"), 120), "night 2 never got the slot"
    finally:
        if pid is not None and process_alive(pid):
            os.kill(pid, signal.SIGCONT)
        print(stopped(serve)[-4000:])
