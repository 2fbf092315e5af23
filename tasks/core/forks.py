"""Processes forked from one that ran a Prefect flow (DataLoader workers: the base build's, the
Trainer's) must not run Prefect's thread-exit hooks when they end.

Prefect's log and event services register such a hook in any process that ran a flow. After a
fork Prefect resets those services, and the hook then fails its own assertion when the child
ends: the child exits with code 1, and a DataLoader raises "worker exited unexpectedly" in the
parent (Prefect 3.8.8; it failed CI). A forked child has none of its parent's threads to drain."""

from __future__ import annotations

import os
import threading

_installed = False


def _is_prefect_service_hook(hook: object) -> bool:
    # threading keeps each hook as functools.partial(bound method of the service)
    owner = getattr(getattr(hook, "func", hook), "__self__", None)
    return owner is not None and type(owner).__module__.startswith("prefect.")


def _forget_prefect_exit_hooks() -> None:
    hooks = getattr(threading, "_threading_atexits", None)
    if hooks:
        hooks[:] = [hook for hook in hooks if not _is_prefect_service_hook(hook)]


def forget_prefect_exit_hooks_in_forks() -> None:
    """From now on, every child this process forks drops Prefect's thread-exit hooks (its own
    hooks, and everyone else's, stay). Once per process; call it before starting workers."""
    global _installed
    if not _installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_prefect_exit_hooks)
        _installed = True
