"""The home's Prefect server vacuums its own database (Prefect's db_vacuum service, turned on for
flow runs): a run that ended longer ago than the retention goes with its task runs and logs, a
recent one stays, so the database stops growing night after night."""

import sqlite3
import time
from datetime import datetime, timedelta, timezone

from tasks.nightly.server import VACUUM, prefect_server


def test_the_home_server_deletes_flow_runs_past_the_retention(tmp_path, monkeypatch):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running

    # Prefect's shortest retention (just over an hour), checked every second; the vacuum's
    # being on at all is the home's default (VACUUM), not set here.
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD", "3601")
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS", "1")
    monkeypatch.delenv("PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED", raising=False)
    assert "flow_runs" in VACUUM["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"]
    prefect_home = tmp_path / "home" / "prefect"
    prefect_home.mkdir(parents=True)
    night = flow(lambda: None, name="night")
    with prefect_server(prefect_home), get_client(sync_client=True) as client:
        old, recent = (client.create_flow_run(flow=night, state=Running()) for _ in range(2))
        for run in (old, recent):
            client.set_flow_run_state(run.id, Completed(), force=True)
        # The server stamps end times itself: the old night ended two hours ago, in its database.
        two_hours_ago = datetime.now(timezone.utc) - timedelta(hours=2)
        with sqlite3.connect(prefect_home / "prefect.db") as database:
            changed = database.execute("UPDATE flow_run SET end_time = ? WHERE id = ?", (
                two_hours_ago.strftime("%Y-%m-%d %H:%M:%S.%f"), str(old.id))).rowcount
        assert changed == 1
        deadline = time.monotonic() + 60
        while old.id in (ids := {run.id for run in client.read_flow_runs()}):
            assert time.monotonic() < deadline, "the old flow run was never vacuumed"
            time.sleep(1)
        assert recent.id in ids
