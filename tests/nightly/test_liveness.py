"""Serve keeps one zombie-flow automation on the home's server, at the heartbeat in effect: a
second serve (another line, a restart) updates it rather than failing or adding another."""

import pytest

from tasks.nightly.liveness import MISSED_HEARTBEATS, ZOMBIE_AUTOMATION, ensure_zombie_automation


@pytest.mark.usefixtures("prefect_server")
def test_the_zombie_automation_is_made_once_and_follows_the_heartbeat():
    from prefect.client.orchestration import get_client

    first = ensure_zombie_automation(180)
    again = ensure_zombie_automation(30)  # a second serve, with heartbeats every 30 s
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(name=ZOMBIE_AUTOMATION)
    assert first == again and len(found) == 1
    trigger = found[0].trigger
    assert trigger.within.total_seconds() == MISSED_HEARTBEATS * 30
    assert trigger.posture == "Proactive" and "prefect.flow-run.heartbeat" in trigger.after
    assert [action.type for action in found[0].actions] == ["change-flow-run-state"]


def test_a_work_dir_is_held_only_by_the_live_process_that_took_its_lock(tmp_path):
    """The lock says which process holds the line whatever Prefect says of it: held while its
    holder runs; not once it let go, was killed, or when its pid now names a later process."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from flows.landing import night_running
    from tasks.nightly.liveness import LOCK_FILE, work_dir_held
    from tests.support import REPO

    work = tmp_path / "line"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom tasks.nightly.promotion import work_dir_lock\n"
         f"with work_dir_lock({str(work)!r}) as ours:\n    print(ours, flush=True)\n"
         "    time.sleep(600)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert work_dir_held(work)
        # no Prefect server is asked: the live holder is enough to hold the watch's batches
        assert night_running("retrain/nowhere", work)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not work_dir_held(work)  # killed: its pid stays in the file, its process is gone

    (work / LOCK_FILE).write_text(str(os.getpid()))  # a pid now naming a later process
    long_ago = time.time() - 3600
    os.utime(work / LOCK_FILE, (long_ago, long_ago))
    assert not work_dir_held(work)

    subprocess.run([sys.executable, "-c", "from tasks.nightly.promotion import work_dir_lock\n"
                    f"with work_dir_lock({str(work)!r}):\n    pass\n"], cwd=REPO, check=True)
    assert (work / LOCK_FILE).read_text() == "" and not work_dir_held(work)  # let go


@pytest.mark.filterwarnings("ignore:Logger 'prefect.flow_runs' attempted")  # no flow run here
def test_a_lost_slot_lease_is_said_once_without_a_traceback(caplog):
    """Prefect logs a lease it could not renew as three retries, an error and a warning, two
    with a traceback; a night that runs on says it in one line."""
    import logging

    from tasks.nightly.liveness import LostLeaseSaidOnce

    said_once = LostLeaseSaidOnce()
    concurrency, flow_runs = logging.getLogger("prefect.concurrency"), logging.getLogger("prefect.flow_runs")
    for logger in (concurrency, flow_runs):
        logger.addFilter(said_once)
    try:
        error = RuntimeError("Client error '410 Gone': Lease not found")
        with caplog.at_level(logging.INFO):
            concurrency.warning("Attempt %s of function 'concurrency lease renewal' failed", 1)
            try:
                raise error
            except RuntimeError:
                concurrency.exception("Function 'concurrency lease renewal' failed after 3 attempts")
                flow_runs.warning("Concurrency lease renewal failed - slots are no longer reserved. "
                                  "Lease ID: %s, exception: %s", "x", error, exc_info=True)
            flow_runs.info("training 40/1500")
    finally:
        for logger in (concurrency, flow_runs):
            logger.removeFilter(said_once)
    assert [(record.levelname, record.exc_info) for record in caplog.records] == [
        ("WARNING", None), ("INFO", None)]
    assert "lease is lost" in caplog.records[0].getMessage()
    assert "Traceback" not in caplog.text
