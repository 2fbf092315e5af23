"""A Prefect server that outlives one command: the one `PREFECT_API_URL` names, or, without it,
one started here on the home's SQLite database (`<home>/prefect/prefect.db`, the same one
`make ui` opens), so that schedules fire and runs stay in the history.

Without this, a process with no `PREFECT_API_URL` gets a temporary server that lives as long as
the process and whose runner refuses schedules ("cannot schedule flows on an ephemeral server").
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ServerUnavailable(RuntimeError):
    """The embedded Prefect server did not come up; the message says where its log is."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(api_url: str) -> bool:
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


@contextmanager
def prefect_server(log_dir: str | Path, port: int | None = None,
                   timeout_s: float = 120) -> Iterator[str]:
    """The API URL of a running Prefect server for the duration of the block: `PREFECT_API_URL`
    when set, else the one already listening on 127.0.0.1:`port`, else `prefect server start`
    there (its log in `log_dir/server.log`), stopped when the block ends. Prefect's settings
    (and the block's subprocesses) point at it inside the block."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    if _healthy(api_url):  # one is up there already (`make ui`): use it
        with _pointing_at(api_url):
            yield api_url
        return
    log_path = Path(log_dir) / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_dies_with_its_parent,
            env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 # the UI's pages call the API at this address (by default port 4200's)
                 "PREFECT_UI_API_URL": api_url})
    try:
        wait_until(lambda: _healthy(api_url), server, timeout_s,
                   f"the Prefect server did not start; see {log_path}")
        with _pointing_at(api_url):
            yield api_url
    finally:
        stop(server)
