"""The image workers: processes that decode and encode, because Pillow's JPEG encoder holds the
GIL and threads cannot use a second core for it (2 cores: 2.0 s on threads, 1.1 s on processes
for 1000 NEU-DET images). Started at first need, one per core (at most 8), kept for the process's life."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tasks.images.sample import ImageStepConfig, LineOutcome, process_lines

CHUNK = 32  # candidates a worker takes at once...
CHUNK_BYTES = 2 * 2**20  # ...or fewer, when they are large: 24 photos of 3 MP make 24 chunks
# Less new work than this is done in the caller's thread (no process started for it).
WORTH_A_WORKER, WORTH_A_WORKER_BYTES = 2 * CHUNK, 2 * CHUNK_BYTES
MAX_WORKERS = 8  # ~70 MiB each while the process lives: no more on a many-core server

_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()
_allowed = False


def allow() -> None:
    """Let this process start image workers: the entry points call it (the CLI, `python -m
    bench`). A worker is a fresh interpreter ("spawn": it inherits none of this process's
    threads, Prefect's among them) that imports the main module again, as multiprocessing does:
    harmless for a module that keeps its work under `if __name__ == "__main__"`, a second run
    for a script that does not. So a library caller opts in; otherwise images go on threads."""
    global _allowed
    _allowed = True


def image_workers() -> ProcessPoolExecutor | None:
    """The process's pool of image workers, one per core up to MAX_WORKERS (None when not
    allowed, or on one core)."""
    global _pool
    cores = min(os.cpu_count() or 1, MAX_WORKERS)
    with _lock:
        if not _allowed or cores < 2:
            return None
        if _pool is None:
            _pool = ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _forget_pool(broken: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


def outcomes(lines: list[str], config: ImageStepConfig, store_root: str | Path,
             on_image: Callable[[], None] | None = None) -> list[LineOutcome]:
    """`process_lines` over the lines, in order, on the workers when there are enough of them.
    A worker that dies (killed, out of memory) costs its chunks a second try in this thread."""
    sizes = [json.loads(line).get("file_size", 0) for line in lines]
    chunks, chunk, chunk_bytes = [], [], 0
    for line, size in zip(lines, sizes, strict=True):
        chunk.append(line)
        chunk_bytes += size
        if len(chunk) == CHUNK or chunk_bytes >= CHUNK_BYTES:
            chunks.append(chunk)
            chunk, chunk_bytes = [], 0
    chunks += [chunk] if chunk else []
    worth_it = len(lines) >= WORTH_A_WORKER or sum(sizes) >= WORTH_A_WORKER_BYTES
    pool = image_workers() if worth_it else None
    futures = [pool.submit(process_lines, chunk, config, str(store_root)) for chunk in chunks] \
        if pool is not None else [None] * len(chunks)
    done: list[LineOutcome] = []
    for chunk, future in zip(chunks, futures, strict=True):
        try:
            answers = future.result() if future is not None else None
        except BrokenProcessPool:
            _forget_pool(pool)
            answers = None
        if answers is None:
            answers = process_lines(chunk, config, store_root)
        done += answers
        if on_image is not None:
            for _ in chunk:
                on_image()
    return done
