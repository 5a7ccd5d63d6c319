"""Micro-batching: concurrent requests' texts merged into shared model calls, in plain asyncio.

It needs only the standard library (no FastAPI, no Prometheus); :mod:`gpt2clf.serve.app`
puts HTTP in front of it and passes the metrics hooks.

Data flow::

    submit(texts, costs) --> a bounded queue of Jobs (QueueFull when max_queue already wait)
    --> the batcher task, on the event loop: the oldest Job waits up to max_wait_ms for others,
        which join in arrival order while texts x longest text <= max_batch_tokens
    --> run_batch(every text of the batch, shortest first) on the executor's thread
    --> each Job's future gets its own results, in its own order.

Guarantees:

* No request overtakes an older one: batches are cut from the front of the queue, in order.
* The oldest request always goes, even alone over ``max_batch_tokens``: nothing starves.
* Each Job gets exactly its own results, in its texts' order, whatever the length sorting.
* ``run_batch`` never runs on the event loop, and one batch runs at a time.
* :meth:`MicroBatcher.discard` takes a Job that gave up out of the queue; if it already
  runs, its results are dropped. Nothing is left behind.
* An exception in ``run_batch`` is set on every Job of that batch; the batcher goes on.
* :meth:`MicroBatcher.close` refuses new Jobs, finishes every queued one, then stops.

Example::

    >>> import asyncio
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> async def demo():
    ...     batcher = MicroBatcher(lambda texts: [t.upper() for t in texts], executor=ThreadPoolExecutor(1))
    ...     batcher.start()
    ...     job = batcher.submit(["ab", "c"], costs=[2, 1])
    ...     result = await job.future
    ...     await batcher.close()
    ...     return result
    >>> asyncio.run(demo())
    ['AB', 'C']
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

__all__ = ["Job", "MicroBatcher", "QueueFull"]


class QueueFull(Exception):
    """The batcher already holds ``max_queue`` waiting requests, or it is shutting down."""


@dataclasses.dataclass(eq=False)
class Job:
    """One request's texts waiting for, or inside, a model call."""

    texts: list[str]
    costs: list[int]  # padded tokens each text takes in a batch (its token count, capped at max_length)
    future: asyncio.Future
    enqueued_at: float = dataclasses.field(default_factory=time.monotonic)


def _ignore(*args: Any) -> None:
    return None


class MicroBatcher:
    """Merges queued requests into shared model calls on one worker thread.

    A batch starts with the oldest request and takes the following ones in arrival order
    (no request overtakes an older one) while ``texts x longest text`` stays within
    ``max_batch_tokens``; it runs once that budget is full or the oldest request has waited
    ``max_wait_ms``. Texts go to the model sorted by length, so its own batches pad little.
    ``run_batch`` receives the texts and returns one result per text, in order; it runs on
    ``executor`` (give it one worker: the model is not re-entrant). ``micro_batching=False``
    runs one request per call. ``on_queue_depth(depth)`` and ``on_batch(texts, requests)``
    report to metrics.
    """

    def __init__(self, run_batch: Callable[[list[str]], Sequence[Any]], *, executor: Executor,
                 max_batch_tokens: int = 8192, max_wait_ms: float = 5.0, max_queue: int = 256,
                 micro_batching: bool = True, on_queue_depth: Callable[[int], None] = _ignore,
                 on_batch: Callable[[int, int], None] = _ignore) -> None:
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_tokens, self.max_wait_ms, self.max_queue = max_batch_tokens, max_wait_ms, max_queue
        self.micro_batching = micro_batching
        self.on_queue_depth, self.on_batch = on_queue_depth, on_batch
        self.queue: deque[Job] = deque()
        self.wakeup = asyncio.Event()
        self.closing = False
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self.task = asyncio.get_running_loop().create_task(self.loop(), name="gpt2clf-batcher")

    def submit(self, texts: list[str], costs: list[int]) -> Job:
        """Queue a request; raise :class:`QueueFull` when ``max_queue`` requests already wait."""
        if self.closing:
            raise QueueFull("the server is shutting down")
        if len(self.queue) >= self.max_queue:
            raise QueueFull(f"{len(self.queue)} requests are already waiting")
        job = Job(texts, costs, asyncio.get_running_loop().create_future())
        self.queue.append(job)
        self.on_queue_depth(len(self.queue))
        self.wakeup.set()
        return job

    def discard(self, job: Job) -> None:
        """Drop a request that gave up (timeout, disconnect); a running one's results are ignored."""
        with contextlib.suppress(ValueError):
            self.queue.remove(job)
            self.on_queue_depth(len(self.queue))
        if not job.future.done():
            job.future.cancel()

    async def close(self) -> None:
        """Finish every queued request, then stop."""
        self.closing = True
        self.wakeup.set()
        if self.task is not None:
            await self.task

    def fits(self, batch_texts: int, batch_longest: int, job: Job) -> bool:
        longest = max(batch_longest, *job.costs)
        return (batch_texts + len(job.texts)) * longest <= self.max_batch_tokens

    def take_batch(self) -> list[Job]:
        jobs = [self.queue.popleft()]  # the oldest always goes, even alone over the budget
        if self.micro_batching:
            texts, longest = len(jobs[0].texts), max(jobs[0].costs)
            while self.queue and self.fits(texts, longest, self.queue[0]):
                job = self.queue.popleft()
                jobs.append(job)
                texts, longest = texts + len(job.texts), max(longest, *job.costs)
        self.on_queue_depth(len(self.queue))
        return jobs

    def budget_full(self) -> bool:
        """Whether the queue already holds more than one batch can take."""
        texts, longest = 0, 0
        for job in self.queue:
            if texts and not self.fits(texts, longest, job):
                return True
            texts, longest = texts + len(job.texts), max(longest, *job.costs)
        return False

    async def wait_for_company(self) -> None:
        """Let the oldest request wait up to ``max_wait_ms`` for others to share its batch."""
        if not self.micro_batching:
            return
        deadline = self.queue[0].enqueued_at + self.max_wait_ms / 1000
        while self.queue and not self.closing and not self.budget_full():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), remaining)

    async def loop(self) -> None:
        while True:
            if not self.queue:
                if self.closing:
                    return
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            await self.wait_for_company()
            if self.queue:  # else the waiting requests gave up meanwhile
                await self.run_jobs(self.take_batch())

    async def run_jobs(self, jobs: list[Job]) -> None:
        """One model call for ``jobs``: their texts shortest first, each job's results back in its order."""
        texts = [text for job in jobs for text in job.texts]
        costs = [cost for job in jobs for cost in job.costs]
        order = sorted(range(len(texts)), key=costs.__getitem__)
        self.on_batch(len(texts), len(jobs))
        try:
            sorted_results = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.run_batch, [texts[i] for i in order])
        except Exception as err:  # a bug in inference: every request of the batch gets it
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        results: list[Any] = [None] * len(texts)
        for position, i in enumerate(order):
            results[i] = sorted_results[position]
        start = 0
        for job in jobs:
            if not job.future.done():  # a timed-out request's results are dropped here
                job.future.set_result(results[start:start + len(job.texts)])
            start += len(job.texts)
