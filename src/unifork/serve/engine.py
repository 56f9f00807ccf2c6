"""The inference engine between the API and the model: a bounded queue, batching, one worker thread.

    submit      put a request on the queue (QueueFull when it holds max_queue requests already)
    run         submit and await the result from asyncio, with the per-request timeout and a disconnect check
    worker      takes the oldest request and every later queued request of the same kind, up to max_batch
                requests and max_images images, and runs them as one batch through `run_batch`

The model runs only in the worker thread, so it never sees two batches at once and the event loop never
blocks on it. A request cancelled while queued (its client went away, or its deadline passed) is dropped
before it is computed. A request already computing runs to the end of its batch: a batch is one forward
loop, and stopping one row of it would save nothing.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from unifork.inference.sampler import MAX_IMAGES
from unifork.serve.errors import ClientGone, EngineStopped, QueueFull, RequestTimeout

DISCONNECT_POLL_S = 0.1  # how often a waiting request asks whether its client is still there


@dataclass(eq=False)
class Job:
    kind: str  # requests of one kind share a batch: "generate" or "ask"
    work: Any  # what run_batch needs for this request
    images: int  # images this request adds to its batch
    deadline: float  # time.monotonic() after which nobody waits for the result
    future: Future = field(default_factory=Future)
    batch_size: int = 0  # how many requests shared this one's batch, once computed


@dataclass
class Stats:
    completed: int = 0
    failed: int = 0
    rejected: int = 0  # 429: the queue was full
    timed_out: int = 0  # 504: no result before the deadline
    disconnected: int = 0  # the client went away while waiting
    dropped: int = 0  # taken off the queue uncomputed: the client went away or the deadline passed first
    batches: int = 0
    batched_requests: int = 0


class Engine:
    def __init__(self, run_batch: Callable[[str, list], list], max_batch: int = 16, max_queue: int = 64,
                 timeout: float = 60.0, max_images: int = MAX_IMAGES):  # fmt: skip
        """run_batch(kind, works) returns one result per work, in order; it is only ever called from the worker."""
        if not 1 <= max_batch <= max_images:
            raise ValueError(f"max_batch must be between 1 and {max_images}, got {max_batch}")
        if max_queue < 1 or not timeout > 0:
            raise ValueError(f"max_queue must be >= 1 and timeout > 0, got {max_queue} and {timeout}")
        self.run_batch, self.max_batch, self.max_queue = run_batch, max_batch, max_queue
        self.timeout, self.max_images = timeout, max_images
        self.stats = Stats()
        self._queue: deque[Job] = deque()
        self._wakeup = threading.Condition()
        self._stopped = False
        self._batch_seconds = 0.0  # running mean of a batch's compute time, for Retry-After
        self._worker = threading.Thread(target=self._work, name="unifork-engine", daemon=True)

    # --- API side ---------------------------------------------------------------------------------------------------

    def start(self) -> Engine:
        self._worker.start()
        return self

    def stop(self) -> None:
        with self._wakeup:
            self._stopped = True
            for job in self._queue:
                if not job.future.cancelled():
                    job.future.set_exception(EngineStopped("the server is shutting down"))
            self._queue.clear()
            self._wakeup.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=30)

    def submit(self, kind: str, work: Any, images: int = 1) -> Job:
        if images > self.max_images:
            raise ValueError(f"a request of {images} images can never fit a batch of {self.max_images}")
        with self._wakeup:
            if self._stopped:
                raise EngineStopped("the server is shutting down")
            if self.queued() >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFull(self.retry_after())
            job = Job(kind, work, images, time.monotonic() + self.timeout)
            self._queue.append(job)
            self._wakeup.notify()
        return job

    async def run(self, kind: str, work: Any, images: int = 1,
                  disconnected: Callable[[], Awaitable[bool]] | None = None) -> Job:  # fmt: skip
        """Submit and wait; returns the finished job (job.future.result() holds the result)."""
        job = self.submit(kind, work, images)
        waiting = asyncio.wrap_future(job.future)
        try:
            while not waiting.done():
                remaining = job.deadline - time.monotonic()
                if remaining <= 0:
                    job.future.cancel()  # fails once the worker has started it: then the result is thrown away
                    break
                await asyncio.wait([waiting], timeout=min(DISCONNECT_POLL_S, remaining))
                if not waiting.done() and disconnected is not None and await disconnected():
                    self.stats.disconnected += 1
                    raise ClientGone("the client disconnected")
        except (ClientGone, asyncio.CancelledError):  # the web demo's events are cancelled when their page goes
            job.future.cancel()
            waiting.add_done_callback(_discard)
            raise
        if not waiting.done() or job.future.cancelled():  # the deadline passed, here or in the worker's queue
            waiting.add_done_callback(_discard)
            self.stats.timed_out += 1
            raise RequestTimeout(f"no result within the server's timeout of {self.timeout:g} s")
        waiting.result()  # raises what the worker raised for this request
        return job

    def queued(self) -> int:
        """Requests waiting for the worker (cancelled ones no longer count)."""
        with self._wakeup:
            return sum(not job.future.cancelled() for job in self._queue)

    def retry_after(self) -> int:
        """Seconds until the running batch and the queued ones have likely finished: at least 1."""
        batches_ahead = 1 + self.queued() / self.max_batch
        return max(1, math.ceil(self._batch_seconds * batches_ahead))

    def set_max_batch(self, max_batch: int) -> None:
        if not 1 <= max_batch <= self.max_images:
            raise ValueError(f"max_batch must be between 1 and {self.max_images}, got {max_batch}")
        self.max_batch = max_batch

    # --- worker side ------------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            if batch:
                self._compute(batch)

    def _next_batch(self) -> list[Job] | None:
        """The oldest live request and the later ones of its kind that fit; None once stopped."""
        with self._wakeup:
            while not self._stopped and not self._queue:
                self._wakeup.wait()
            if self._stopped:
                return None
            now, kind, images = time.monotonic(), None, 0
            batch, dropped, kept = [], [], deque()
            max_batch = self.max_batch  # read once: an admin may change it meanwhile
            for job in self._queue:
                if job.future.cancelled() or job.deadline <= now:
                    dropped.append(job)
                    continue
                kind = kind or job.kind
                if len(batch) < max_batch and job.kind == kind and images + job.images <= self.max_images:
                    batch.append(job)
                    images += job.images
                else:
                    kept.append(job)
            self._queue = kept
        for job in dropped:
            job.future.cancel()  # an expired job's waiter reads the cancellation as its timeout
        # a job cancelled since the loop above is dropped here, still before it is computed
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        self.stats.dropped += len(dropped) + len(batch) - len(live)
        return live

    def _compute(self, batch: list[Job]) -> None:
        start = time.monotonic()
        try:
            results = self.run_batch(batch[0].kind, [job.work for job in batch])
            outcomes = list(zip(batch, results, [None] * len(batch)))
        except Exception as err:  # noqa: BLE001 - a failure is handed to the requests, never kills the worker
            outcomes = self._one_by_one(batch) if len(batch) > 1 else [(batch[0], None, err)]
        elapsed = time.monotonic() - start
        self._batch_seconds = elapsed if self.stats.batches == 0 else 0.8 * self._batch_seconds + 0.2 * elapsed
        self.stats.batches += 1
        self.stats.batched_requests += len(batch)
        for job, result, err in outcomes:
            job.batch_size = len(batch)
            if err is None:
                self.stats.completed += 1
                job.future.set_result(result)
            else:
                self.stats.failed += 1
                job.future.set_exception(err)

    def _one_by_one(self, batch: list[Job]) -> list[tuple[Job, Any, Exception | None]]:
        """After a batch failed: each request alone, so one bad request fails only itself."""
        outcomes = []
        for job in batch:
            try:
                outcomes.append((job, self.run_batch(job.kind, [job.work])[0], None))
            except Exception as err:  # noqa: BLE001
                outcomes.append((job, None, err))
        return outcomes


def _discard(waiting: asyncio.Future) -> None:
    """Mark an abandoned request's outcome as read, so asyncio does not log it as a lost exception."""
    if not waiting.cancelled():
        waiting.exception()
