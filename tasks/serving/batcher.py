"""Dynamic batching across concurrent requests: the first image of a batch waits up to
`max_wait_ms` for others, up to `max_batch` images run through the model together, in one
worker thread (generation releases the GIL; one batch at a time keeps memory bounded)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Waiting:
    item: Any
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """`await batcher.submit(item)` -> `run(batch)`'s answer for that item. `run` takes a list of
    items and returns one answer per item (an Exception instance fails that item alone)."""

    def __init__(self, run: Callable[[list], list], max_batch: int, max_wait_ms: float,
                 on_batch: Callable[[int], None] | None = None):
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.on_batch = on_batch
        self.queue: asyncio.Queue[_Waiting] | None = None
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.worker.shutdown(wait=False, cancel_futures=True)

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Waiting(item, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = batch[0].queued_at + self.max_wait
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    batch.append(self.queue.get_nowait() if left <= 0 else
                                 await asyncio.wait_for(self.queue.get(), left))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            if self.on_batch:
                self.on_batch(len(batch))
            try:
                answers = await loop.run_in_executor(self.worker, self.run,
                                                     [w.item for w in batch])
            except Exception as exc:  # noqa: BLE001 - the batch's requests get it, the loop goes on
                answers = [exc] * len(batch)
            for waiting, answer in zip(batch, answers, strict=True):
                if waiting.future.done():
                    continue  # its client went away
                if isinstance(answer, Exception):
                    waiting.future.set_exception(answer)
                else:
                    waiting.future.set_result(answer)
