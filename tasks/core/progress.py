"""One shared progress bar for per-image work that runs in several task threads at once.

Cached tasks do no work and show no bar; the bar appears with the first image really touched.
What work was done is not counted here (a Dask worker is another process): each step returns
its own counters, and `work_this_run` adds those of the steps that really ran."""

from __future__ import annotations

import threading
from collections import Counter

from tqdm.auto import tqdm

_lock = threading.Lock()
_bar: tqdm | None = None
enabled = True
WORK_KEYS = ("images_decoded", "images_reused", "images_encoded", "encodes_reused")


def work_this_run(steps: list[tuple[dict[str, int], bool]]) -> dict[str, int]:
    """(a step's counters, whether it ran) per step -> the work this run did: a Cached step
    returns the counters of the run that computed it, and did nothing tonight."""
    total: Counter = Counter()
    rendered_early = 0
    for counters, ran in steps:
        if ran:
            total.update({key: counters.get(key, 0) for key in WORK_KEYS})
            rendered_early += counters.get("flips_rendered", 0)
    # The image step renders the training images' flips while it has their pixels, and the
    # augment step then finds them made: each is one encode of this run, not a reuse.
    total["encodes_reused"] = max(0, total["encodes_reused"] - rendered_early)
    return {key: value for key, value in sorted(total.items()) if value}


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
