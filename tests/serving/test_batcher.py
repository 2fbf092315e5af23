"""Dynamic batching: concurrent requests run together up to max_batch; one item's failure fails
that item alone."""

from __future__ import annotations

import asyncio

from tasks.serving.batcher import DynamicBatcher


def test_concurrent_items_run_in_batches_of_at_most_max_batch():
    sizes = []

    def run(items: list[int]) -> list:
        return [item * 2 for item in items]

    async def main():
        batcher = DynamicBatcher(run, max_batch=4, max_wait_ms=50, on_batch=sizes.append)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(n) for n in range(10)),
                                       return_exceptions=True)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert results == [n * 2 for n in range(10)]
    assert sizes == [4, 4, 2]


def test_one_failing_item_fails_alone():
    def run(items):
        return [ValueError("bad") if item == "bad" else item for item in items]

    async def main():
        batcher = DynamicBatcher(run, max_batch=8, max_wait_ms=20)
        batcher.start()
        results = await asyncio.gather(batcher.submit("good"), batcher.submit("bad"),
                                       return_exceptions=True)
        await batcher.stop()
        return results

    good, bad = asyncio.run(main())
    assert good == "good" and isinstance(bad, ValueError) and str(bad) == "bad"
