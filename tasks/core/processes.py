"""Whether a process still runs (by pid, on this machine)."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True  # someone else's, alive
    return True


def running_since(pid: int, since: float) -> bool:
    """Whether process `pid` runs and was already running at `since` (epoch seconds): a pid the
    system has since given to a process started later is another process."""
    import psutil

    try:
        return psutil.Process(pid).create_time() <= since + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return process_alive(pid)
