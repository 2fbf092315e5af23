"""One shared progress bar for per-image work that runs in several task threads at once.

Cached tasks do no work and show no bar; the bar appears with the first image really touched."""

from __future__ import annotations

import threading
from collections import Counter

from tqdm.auto import tqdm

_lock = threading.Lock()
_bar: tqdm | None = None
enabled = True
# Work really done in this process (a cached task adds nothing): images decoded, re-encoded...
work: Counter = Counter()


def reset() -> None:
    with _lock:
        work.clear()


def record(key: str, n: int = 1) -> None:
    with _lock:
        work[key] += n


def advance(n: int = 1, desc: str = "images") -> None:
    global _bar
    if not enabled:
        return
    with _lock:
        if _bar is None:
            _bar = tqdm(desc=desc, unit="img", dynamic_ncols=True)
        _bar.update(n)


def finish() -> None:
    global _bar
    with _lock:
        if _bar is not None:
            _bar.close()
        _bar = None
