"""The home's Prefect server: the one `PREFECT_API_URL` names, else the home's lasting one
(`defectflow server start`: detached, `<home>/prefect/server.json`, every line of the home uses
it), else one started for the length of a command on the home's SQLite database
(`<home>/prefect/prefect.db`), so that schedules fire and runs stay in the history.

Without this, a process with no `PREFECT_API_URL` gets a temporary server that lives as long as
the process and whose runner refuses schedules ("cannot schedule flows on an ephemeral server").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.core.home import Home, home_server_url, serves_home
from tasks.core.processes import process_alive

DEFAULT_PORT = 4200  # the port the Prefect UI is usually opened on
# Prefect's own vacuum keeps the home's database flat (a night adds ~3 MB of runs, states, logs
# and events): events go after Prefect's 7 days, flow runs (their task runs, states, logs and
# artifacts) 30 days after they ended. Status reads a line's last night and home collection
# each folder's newest prepare from there: a line idle for longer shows no last night, and its
# intermediates are made again at its next prepare. An exported value wins.
VACUUM = {"PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
          "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(30 * 24 * 3600)}
# Leases of concurrency slots on disk (Prefect's own filesystem storage, in the server's home),
# not in the server's memory: a server restarted while a night held its line's slot forgot the
# lease but not the slot, and every later night of the line waited for it forever (make chaos).
LEASES = {"PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE":
          "prefect.server.concurrency.lease_storage.filesystem"}


class ServerUnavailable(RuntimeError):
    """The embedded Prefect server did not come up; the message says where its log is."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # as the server binds it: a port its last server left in TIME_WAIT is free (a restart
        # on the same port, where every serve and night still looks for it)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def answers(api_url: str) -> bool:
    """Whether the Prefect server at `api_url` answers its health check."""
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(ready, process: subprocess.Popen, timeout_s: float, failure: str,
               interval_s: float = 0.5) -> None:
    """Poll `ready()` until true; raise ServerUnavailable(`failure`) if `process` exits first or
    `timeout_s` pass."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise ServerUnavailable(failure)
        time.sleep(interval_s)


def stop(process: subprocess.Popen, signal_number: int = signal.SIGTERM,
         timeout_s: float = 30) -> None:
    """Ask the process to end with `signal_number`; kill it if it has not after `timeout_s`."""
    process.send_signal(signal_number)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()


@contextmanager
def _pointing_at(api_url: str) -> Iterator[str]:
    """Prefect's settings, and the environment the block's subprocesses inherit, on `api_url`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        os.environ["PREFECT_API_URL"] = api_url
        try:
            yield api_url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def _dies_with_its_parent() -> None:
    """(Runs in the server's process before it starts.) On Linux, the server is sent SIGTERM
    when the process that started it dies, even by SIGKILL: a killed `serve` or demo never
    leaves an orphan server holding the port and the database."""
    if sys.platform == "linux":
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _start(home: Home, port: int, detached: bool) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on the home's database (its log appended to `server.log`)."""
    home.prefect.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    with open(home.prefect / "server.log", "ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
            # detached: a session of its own, no parent-death signal (it outlives the command)
            start_new_session=detached, preexec_fn=None if detached else _dies_with_its_parent,
            env={**VACUUM, **os.environ, **LEASES, "PREFECT_HOME": str(home.prefect),
                 "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 # the UI's pages call the API at this address (by default port 4200's)
                 "PREFECT_UI_API_URL": api_url})
    return server, api_url


@contextmanager
def prefect_server(prefect_home: str | Path, port: int | None = None,
                   timeout_s: float = 120) -> Iterator[str]:
    """The API URL of a running Prefect server for the duration of the block: `PREFECT_API_URL`
    when set; else the home's lasting server when it is up; else one on 127.0.0.1:`port` that
    keeps its runs in this home (`make ui`'s); else `prefect server start` on `port` (another
    free port when that one is taken), stopped when the block ends. Prefect's settings (and the
    block's subprocesses) point at it inside the block."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    home = Home(Path(prefect_home).resolve().parent)
    url = home_server_url(home)
    if url is None and port and serves_home(f"http://127.0.0.1:{port}/api", home):
        url = f"http://127.0.0.1:{port}/api"
    if url is not None:
        with _pointing_at(url):
            yield url
        return
    server, api_url = _start(home, port if port and port_is_free(port) else free_port(),
                             detached=False)
    try:
        wait_until(lambda: answers(api_url), server, timeout_s,
                   f"the Prefect server did not start; see {home.prefect / 'server.log'}")
        with _pointing_at(api_url):
            yield api_url
    finally:
        stop(server)


def start_home_server(home: Home, port: int = DEFAULT_PORT, timeout_s: float = 120) -> dict:
    """Start the home's lasting server, detached (it outlives this process and serves every
    line of the home), unless it is up already; its pid, URL and log in `server.json`."""
    if url := home_server_url(home):
        return {**json.loads(home.server_record.read_text()), "url": url, "started": False}
    server, api_url = _start(home, port if port_is_free(port) else free_port(), detached=True)
    try:
        wait_until(lambda: answers(api_url), server, timeout_s,
                   f"the Prefect server did not start; see {home.prefect / 'server.log'}")
    except ServerUnavailable:
        _end_group(server.pid)
        raise
    record = {"pid": server.pid, "url": api_url, "log": str(home.prefect / "server.log")}
    staged = home.server_record.with_suffix(".tmp")
    staged.write_text(json.dumps(record, indent=1))
    staged.replace(home.server_record)
    return {**record, "started": True}


def home_server_status(home: Home) -> dict:
    """{"up": bool, "url", "pid", "log"}: what `server.json` says, and whether it answers."""
    try:
        record = json.loads(home.server_record.read_text())
    except (OSError, ValueError):
        record = {}
    return {"up": home_server_url(home) is not None, "url": record.get("url"),
            "pid": record.get("pid"), "log": str(home.prefect / "server.log")}


def stop_home_server(home: Home, timeout_s: float = 60) -> bool:
    """Stop the home's lasting server; False when none was up. Only a process that still
    serves this home is signalled (a pid in an old record may belong to another program now)."""
    status = home_server_status(home)
    if status["pid"] and (status["up"] or _runs_prefect_server(int(status["pid"]))):
        _end_group(int(status["pid"]), timeout_s)  # (a hung server too: it holds the port)
    home.server_record.unlink(missing_ok=True)
    return bool(status["up"])


def _end_group(pid: int, timeout_s: float = 60) -> None:
    """SIGTERM to the server's session (the server was started as its leader), SIGKILL when it
    has not ended after `timeout_s`."""
    deadline, signal_number = time.monotonic() + timeout_s, signal.SIGTERM
    while _alive(pid):
        if signal_number is not None:
            try:
                os.killpg(pid, signal_number)
            except ProcessLookupError:
                return
            signal_number = None
        if time.monotonic() > deadline:
            signal_number, deadline = signal.SIGKILL, float("inf")
        time.sleep(0.2)


def _runs_prefect_server(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"prefect" in command and b"server" in command and b"start" in command


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child (tests): reaped, gone
            return False
    except ChildProcessError:
        pass  # another process's child: ask the kernel
    return process_alive(pid)
