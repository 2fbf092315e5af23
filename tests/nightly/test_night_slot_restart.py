"""A line's night slot held across a restart of the home's Prefect server: its lease is kept on
disk, so when the night holding it dies the slot comes back (Prefect's repossessor frees it once
the lease lapses). With leases in the server's memory the restarted server forgot the lease but
not the slot, and every later night of the line waited forever (found by `make chaos`)."""

from __future__ import annotations

import subprocess
import sys
import time

from tasks.core.home import Home
from tasks.nightly.liveness import night_slot
from tasks.nightly.server import free_port, start_home_server, stop_home_server
from tests.support import REPO

HOLDER = """import time
from prefect.concurrency.sync import concurrency
from tasks.nightly.liveness import ensure_night_slot
# as holding_night_slot takes it, with the shortest lease Prefect allows (60 s; a night holds 3 heartbeats)
with concurrency(ensure_night_slot("retrain-plant"), occupy=1, strict=True, lease_duration=60,
                 raise_on_lease_renewal_failure=False):
    print("held", flush=True)
    time.sleep(600)
"""


def active_slots(api_url: str) -> int:
    import httpx

    found = httpx.get(f"{api_url}/v2/concurrency_limits/{night_slot('retrain-plant')}", timeout=10)
    found.raise_for_status()
    return found.json()["active_slots"]


def test_a_slot_held_across_a_server_restart_comes_back_when_its_night_dies(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS", "3")
    home, port = Home(tmp_path / "home"), free_port()
    api_url = start_home_server(home, port)["url"]
    holder = None
    try:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER], cwd=REPO, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PREFECT_API_URL": api_url})
        assert holder.stdout.readline().strip() == "held"
        assert active_slots(api_url) == 1
        stop_home_server(home)
        start_home_server(home, port)
        assert active_slots(api_url) == 1  # the night still holds it
        holder.kill()
        holder.wait()
        deadline = time.monotonic() + 120
        while active_slots(api_url) and time.monotonic() < deadline:
            time.sleep(2)
        assert active_slots(api_url) == 0, "the dead night's slot never came back"
    finally:
        if holder and holder.poll() is None:
            holder.kill()
        stop_home_server(home)
