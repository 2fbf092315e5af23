"""Retrying I/O that can fail transiently (the Hub, a registry): exponential backoff, 4xx never."""

from __future__ import annotations

import time
from collections.abc import Callable


def is_transient(exc: BaseException) -> bool:
    """Network trouble and 5xx/429 answers are worth retrying; 4xx (bad token, no access) is not."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return status >= 500 or status == 429
    name = type(exc).__name__
    return name in {"ConnectError", "ReadTimeout", "ConnectTimeout", "RemoteProtocolError"}


def with_backoff(action: Callable[[], object], attempts: int = 5, first_delay: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] = print):
    """Run `action`, retrying transient failures after 2, 4, 8, ... seconds."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - filtered by is_transient
            if attempt == attempts or not is_transient(exc):
                raise
            delay = first_delay * 2 ** (attempt - 1)
            log(f"transient error ({type(exc).__name__}), retry {attempt}/{attempts - 1} in {delay:g}s")
            sleep(delay)
    raise AssertionError("unreachable")
