"""The dynamic batcher in-process: batches fill to max_batch or leave after max_wait, a full
queue refuses all-or-nothing, a failing batch fails only its own images."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gradex.serve.batching import DynamicBatcher, QueueFull


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown()


def make(executor, run, **kwargs):
    settings = {"max_batch": 4, "max_wait_ms": 50, "max_queue": 16, "name": "test"} | kwargs
    return DynamicBatcher(run, executor=executor, **settings)


def test_concurrent_submissions_share_batches_up_to_max_batch(executor):
    calls = []

    def run(items):
        calls.append(list(items))
        return [item * 10 for item in items]

    async def main():
        batcher = make(executor, run)
        return await asyncio.gather(*(batcher.submit([i]) for i in range(10)))

    results = asyncio.run(main())
    assert [r[0].value for r in results] == [i * 10 for i in range(10)]
    assert [len(c) for c in calls] == [4, 4, 2]
    assert sorted(x for c in calls for x in c) == list(range(10))
    assert [r[0].batch_size for r in results] == [4] * 8 + [2] * 2


def test_a_lone_request_leaves_after_max_wait(executor):
    async def main():
        batcher = make(executor, lambda items: list(items), max_wait_ms=80)
        started = time.perf_counter()
        (result,) = await batcher.submit(["a"])
        return time.perf_counter() - started, result

    elapsed, result = asyncio.run(main())
    assert result.value == "a" and result.batch_size == 1
    assert 0.07 <= elapsed < 2.0
    assert result.queue_ms >= 70


def test_one_request_of_many_items_is_split_into_batches_in_order(executor):
    async def main():
        batcher = make(executor, lambda items: [x + 1 for x in items])
        return await batcher.submit(list(range(9)))

    results = asyncio.run(main())
    assert [r.value for r in results] == list(range(1, 10))


def test_a_full_queue_refuses_all_or_nothing(executor):
    release = threading.Event()

    def run(items):
        release.wait(5)
        return list(items)

    async def main():
        batcher = make(executor, run, max_batch=1, max_wait_ms=0, max_queue=3)
        first = asyncio.ensure_future(batcher.submit([0]))
        await asyncio.sleep(0.05)  # the first item is running, the queue is empty
        queued = asyncio.ensure_future(batcher.submit([1, 2]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as refused:
            await batcher.submit([3, 4])  # 2 waiting + 2 > 3: neither is queued
        assert batcher.waiting == 2
        release.set()
        return refused.value, await first, await queued

    refused, first, queued = asyncio.run(main())
    assert refused.retry_after_s >= 1 and "--max-queue" in str(refused)
    assert [r.value for r in first + queued] == [0, 1, 2]


def test_a_failing_batch_fails_only_its_own_images(executor):
    def run(items):
        if "bad" in items:
            raise RuntimeError("boom")
        return list(items)

    async def main():
        batcher = make(executor, run, max_batch=2, max_wait_ms=20)
        together = await asyncio.gather(
            batcher.submit(["bad"]), batcher.submit(["x"]), return_exceptions=True
        )
        after = await batcher.submit(["y"])
        return together, after

    together, after = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in together)  # they shared the batch
    assert after[0].value == "y"


def test_a_cancelled_request_is_skipped(executor):
    seen = []

    def run(items):
        seen.extend(items)
        return list(items)

    async def main():
        batcher = make(executor, run, max_wait_ms=100)
        gone = asyncio.ensure_future(batcher.submit(["gone"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        return await batcher.submit(["kept"])

    (kept,) = asyncio.run(main())
    assert kept.value == "kept" and seen == ["kept"]
