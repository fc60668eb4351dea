"""Dynamic batching: images from concurrent requests gathered into one model call.

A batch leaves when it holds ``max_batch`` images, or ``max_wait`` after its first image
arrived, whichever comes first; while one batch runs, the next one gathers. The queue is bounded:
a request that would overfill it is refused at once (``QueueFull``, a 503 with Retry-After),
so a burst past the server's capacity costs its senders a retry, not everyone unbounded latency.

Batches run on one executor thread per device (``runner``): predict and explain queues share
it, so the device runs one batch at a time and the event loop stays free for HTTP.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any


class QueueFull(Exception):
    """The server holds as many waiting images as it may; the client should retry later."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class Batched:
    """One image's result, with what its batch cost it."""

    value: Any
    queue_ms: float  # from submission until its batch started
    model_ms: float  # the batch's run
    batch_size: int


@dataclass
class _Waiting:
    item: Any
    future: asyncio.Future
    arrived: float


class DynamicBatcher:
    """Gathers submitted items into calls of ``run(items) -> results`` (one result per item).

    ``run`` executes on ``executor``; the batcher's own loop runs on the event loop that first
    submits. One instance per kind of call (predict, explain)."""

    def __init__(
        self,
        run: Callable[[Sequence[Any]], Sequence[Any]],
        *,
        executor: Executor,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        name: str,
    ):
        self._run = run
        self._executor = executor
        self.max_batch = max_batch
        self._max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.name = name
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._seconds_per_batch = 0.05  # a running estimate, for Retry-After

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _start(self) -> None:
        if self._loop_task is None:
            self._arrived = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._gather_and_run())

    async def submit(self, items: Sequence[Any]) -> list[Batched]:
        """Results for ``items`` in order, once their batches have run. All or none queued:
        raises ``QueueFull`` without queueing any item if they do not all fit."""
        self._start()
        if len(self._waiting) + len(items) > self.max_queue:
            batches_ahead = (len(self._waiting) + len(items)) / self.max_batch
            retry = max(1, round(batches_ahead * self._seconds_per_batch))
            raise QueueFull(
                f"{self.name} queue full: {len(self._waiting)} image(s) waiting, "
                f"{len(items)} more would pass the limit of {self.max_queue} (--max-queue); "
                f"retry in {retry} s",
                retry,
            )
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        waiting = [_Waiting(item, loop.create_future(), now) for item in items]
        self._waiting.extend(waiting)
        self._arrived.set()
        return list(await asyncio.gather(*(w.future for w in waiting)))

    async def _next_batch(self) -> list[_Waiting]:
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._waiting[0].arrived + self._max_wait
        while len(self._waiting) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        count = min(self.max_batch, len(self._waiting))
        return [self._waiting.popleft() for _ in range(count)]

    async def _gather_and_run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            # A client that went away while its images waited: its future is cancelled.
            batch = [w for w in batch if not w.future.done()]
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run, [w.item for w in batch]
                )
            except Exception as error:  # every image of the batch gets the error
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(error)
                continue
            finished = time.perf_counter()
            seconds = finished - started
            self._seconds_per_batch = 0.8 * self._seconds_per_batch + 0.2 * seconds
            for w, value in zip(batch, results, strict=True):
                if not w.future.done():
                    w.future.set_result(
                        Batched(
                            value,
                            queue_ms=1000 * (started - w.arrived),
                            model_ms=1000 * seconds,
                            batch_size=len(batch),
                        )
                    )
