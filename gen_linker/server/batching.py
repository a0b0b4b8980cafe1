"""Micro-batching: concurrent requests share one `linker.link` call.

The linkers' throughput comes from batching (prompts grouped by length, one backend call for
many mentions), so the service must not link one request at a time. Requests put their
mentions in one queue; one worker takes up to `max_batch` mentions (across requests, FIFO; a
large request may be split over two batches) as soon as as many wait as are expected (the
mentions of the requests answered by the last batch plus those already waiting: clients
answered together come back together), or once the oldest has waited `max_wait_ms` (counted
from the last batch's answer when that is later), links them in one call on a worker thread
(the event loop keeps accepting requests meanwhile, so the next batch fills while this one
runs) and answers each request with its own results, in order.

- A full queue (`max_queue` mentions waiting) refuses new requests (`QueueFull`: 503 with
  Retry-After), so memory and latency stay bounded under overload.
- A request whose client went away is cancelled: its mentions not yet taken are dropped, and
  results for those already in a running batch are discarded; the rest of the batch is
  answered as usual.
- Mention ids are made unique inside a batch (clients reuse ids), and restored in the answer.
- One bad mention does not cost the batch: on a `GenLinkerError`/`ValueError`/`RuntimeError`
  the batch is retried one mention at a time, and the failing ones become error records, as
  in the batch CLI. Any other exception fails the requests of that batch (500), not the worker.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import GenLinkerError, RecordError
from ..schema import LinkResult, Mention

# The longest a mention waits for the others expected to join its batch. With a fixed 10 ms
# window, 16 single-mention clients on 2 cores split into two alternating half-size batches
# (their next requests came back just after the window closed): 0.47x the offline rate, p50
# 484 ms; waiting for the expected batch (up to 50 ms) fills it (eval/results/server.md).
MAX_WAIT_MS = 50.0

LinkFn = Callable[[Sequence[Mention]], list[LinkResult]]


class QueueFull(Exception):
    """The queue holds `max_queue` mentions: come back after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full, retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class Job:
    """One request's mentions and the future its handler waits on."""

    seq: int
    mentions: list[Mention]
    future: asyncio.Future
    enqueued: float
    results: list = field(default_factory=list)
    taken: int = 0          # mentions handed to a batch so far
    answered: int = 0
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.mentions)


@dataclass
class BatchStats:
    """Counters the tests and the benchmark read."""

    batches: int = 0
    mentions: int = 0
    largest: int = 0
    rejected: int = 0        # requests refused with QueueFull
    cancelled: int = 0       # requests whose client went away
    dropped: int = 0         # mentions of cancelled requests never linked
    sizes: deque = field(default_factory=lambda: deque(maxlen=1000))


def link_batch(link: LinkFn, mentions: Sequence[Mention]) -> list[LinkResult | RecordError]:
    """`link(mentions)`, or mention by mention when the batch call fails on bad input."""
    try:
        results = link(mentions)
    except (GenLinkerError, ValueError, RuntimeError) as exc:
        if len(mentions) == 1:
            return [RecordError(f"linking failed: {exc}", record_id=mentions[0].id)]
        return [link_batch(link, [m])[0] for m in mentions]
    if len(results) != len(mentions):
        raise GenLinkerError(f"the linker answered {len(results)} results for {len(mentions)} mentions")
    return list(results)


class MicroBatcher:
    """One queue, one worker, one linking thread (see the module docstring)."""

    def __init__(self, link: LinkFn, *, max_batch: int = 64, max_wait_ms: float = MAX_WAIT_MS,
                 max_queue: int = 1024) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be at least 1, max_wait_ms at least 0")
        self.link, self.max_batch, self.max_wait = link, max_batch, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._jobs: deque[Job] = deque()
        self._queued = 0                     # mentions waiting, not yet taken by a batch
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._seq = itertools.count(1)
        self._rate = 0.0                     # recent mentions/s, for Retry-After
        # mentions expected for the next batch: those of the requests just answered (their
        # clients tend to come back) plus those already waiting; the first batch expects a full one
        self._expect = max_batch
        self._last_end = 0.0                 # when the last batch was answered

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker on the running event loop (idempotent)."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        if self._loop is not loop:          # a new event loop (a test client's): nothing carries over
            self._jobs.clear()
            self._queued = 0
        self._loop = loop
        self._wake = asyncio.Event()
        self._executor = self._executor or ThreadPoolExecutor(1, thread_name_prefix="gen-linker-link")
        self._task = loop.create_task(self._run(), name="gen-linker-batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still waiting fail with a GenLinkerError."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(GenLinkerError("the service is shutting down"))
        self._jobs.clear()
        self._queued = 0
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    @property
    def queued(self) -> int:
        return self._queued

    # ------------------------------------------------------------------ requests
    def submit(self, mentions: list[Mention]) -> Job:
        """Queue a request's mentions; QueueFull when there is no room for them."""
        self.start()
        n = len(mentions)
        if self._queued and self._queued + n > self.max_queue:
            self.stats.rejected += 1
            raise QueueFull(self.retry_after())
        job = Job(next(self._seq), list(mentions), asyncio.get_running_loop().create_future(), time.monotonic())
        if not mentions:
            job.future.set_result([])
            return job
        self._jobs.append(job)
        self._queued += n
        self._wake.set()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: drop what is not linked yet, discard the rest when it comes."""
        if job.cancelled or job.future.done():
            return
        job.cancelled = True
        self.stats.cancelled += 1
        untaken = len(job.mentions) - job.taken
        self._queued -= untaken
        self.stats.dropped += untaken
        job.taken = len(job.mentions)
        job.future.cancel()

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (at least 1)."""
        return max(1, math.ceil(self._queued / self._rate)) if self._rate > 0 else 1

    # ------------------------------------------------------------------ the worker
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            oldest = next((j.enqueued for j in self._jobs if not j.cancelled), None)
            if oldest is None:
                self._jobs.clear()
                self._wake.clear()
                continue
            # wait for the batch to fill up to what is expected, at most max_wait after the oldest
            # mention arrived or the last batch was answered (whichever is later): a lone client
            # is answered at once, and clients answered together are linked together again
            target = min(self.max_batch, self._expect)
            start = max(oldest, self._last_end)
            while self._queued < target:
                remaining = start + self.max_wait - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if self._queued:
                self._wake.set()
            else:
                self._wake.clear()
            if not batch:
                continue
            mentions = [dataclasses.replace(m, id=f"{job.seq}:{i}") for job, i, m in batch]
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, link_batch, self.link, mentions)
            except Exception as exc:            # a linker bug: fail these requests, keep serving
                for job in {job for job, _, _ in batch}:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            dt = max(time.perf_counter() - t0, 1e-6)
            self._rate = len(batch) / dt if self._rate == 0 else 0.8 * self._rate + 0.2 * len(batch) / dt
            self.stats.batches += 1
            self.stats.mentions += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            self.stats.sizes.append(len(batch))
            for (job, i, m), res in zip(batch, results):
                self._answer(job, i, m, res)
            self._expect, self._last_end = max(1, len(batch) + self._queued), time.monotonic()

    def _take(self) -> list[tuple[Job, int, Mention]]:
        """Up to max_batch mentions from the head of the queue, skipping cancelled jobs."""
        batch: list[tuple[Job, int, Mention]] = []
        while self._jobs and len(batch) < self.max_batch:
            job = self._jobs[0]
            if job.cancelled:
                self._jobs.popleft()
                continue
            k = min(len(job.mentions) - job.taken, self.max_batch - len(batch))
            batch.extend((job, i, job.mentions[i]) for i in range(job.taken, job.taken + k))
            job.taken += k
            self._queued -= k
            if job.taken == len(job.mentions):
                self._jobs.popleft()
        return batch

    @staticmethod
    def _answer(job: Job, i: int, mention: Mention, res: LinkResult | RecordError) -> None:
        if job.cancelled or job.future.done():
            return
        if isinstance(res, RecordError):
            job.results[i] = {"id": mention.id, "error": res.reason, "line": i + 1}
        else:
            job.results[i] = dataclasses.replace(res, mention_id=mention.id)
        job.answered += 1
        if job.answered == len(job.mentions):
            job.future.set_result(job.results)
