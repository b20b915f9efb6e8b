"""DynamicBatcher: coalesce concurrent requests for one graph into ONNX Runtime calls.

ndarrays in, ndarrays out; no grpc, no protobuf, so any front (vae.v1, a later KServe v2)
shares it. Rows, not requests, count against max_batch_size and max_queue_rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.batching.saturation import CpuSaturation, Saturation
from service.context import NO_CONTEXT, RequestContext
from service.errors import DeadlineExpired, ModelUnavailable, QueueFull

logger = logging.getLogger(__name__)
RunBatch = Callable[[np.ndarray], list[np.ndarray]]
"""Runs one batch [n, ...] and returns outputs with n rows each; called in a worker thread
or, for batches measured cheap, on the event loop."""
Timed = tuple[list[np.ndarray], float]
"""A batch's outputs and the seconds ONNX Runtime took for them."""
LONE_INLINE_BELOW_S = 0.001
"""A lone request of a size whose smoothed compute time is under this (or under the inline
threshold, if higher) runs on the loop: the hand-off would cost it about 0.1 ms with nothing
to overlap, and a call of the other graph arriving meanwhile waits about this long at most
(conv decoder at concurrency 1: p50 -0.15 ms, docs/benchmarks.md)."""
SATURATED_WAIT_S = 0.005
"""Without a fixed max_queue_delay, the longest rows wait for company while calls come in
company to a full CPU (service/batching/saturation.py). A call reaches the loop about every
0.3 ms then, so a batch that waits this long gathers about 15 rows (one core, concurrency
64); a wait ends sooner once as many rows are in as the last one's crowd (concurrency 8:
7-8 rows, no idle wait; docs/benchmarks.md, "Pinned one-core peers")."""
COMPANY_MEMORY_S = 0.1
"""A call that met company within this long means calls come in company now. A lone client
can fill the CPU too (one core at concurrency 1 is 70-90 % busy), but no row of it would
ever get company by waiting."""


class BatchObserver(Protocol):
    """Where the batcher reports what it does (metrics); every method must be cheap."""

    def queue_rows(self, rows: int) -> None: ...
    def waited(self, seconds: float) -> None: ...
    def executed(self, rows: int, seconds: float) -> None: ...


class _NoObserver:
    def queue_rows(self, rows: int) -> None:
        pass

    def waited(self, seconds: float) -> None:
        pass

    def executed(self, rows: int, seconds: float) -> None:
        pass


@dataclass(slots=True)
class _Pending:
    """One chunk of a request (at most max_batch_size rows) waiting for its outputs."""

    rows: np.ndarray
    context: RequestContext
    future: asyncio.Future[list[np.ndarray]]
    enqueued_s: float


class DynamicBatcher:
    """One per graph: a bounded row queue drained into `run_batch`, up to `instances` at a time."""

    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        max_queue_rows: int = 4096,
        instances: int = 1,
        inline_below_us: int = 0,
        observer: BatchObserver | None = None,
        saturation: Saturation | None = None,
    ) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_rows = max_queue_rows
        self._delay_s = max_queue_delay_us / 1e6
        self._inline_below_s = inline_below_us / 1e6
        self._lone_inline_below_s = (max(self._inline_below_s, LONE_INLINE_BELOW_S)
                                     if inline_below_us else 0.0)
        self._compute_s: dict[int, float] = {}
        """Recent ONNX Runtime seconds per batch-size class (rows.bit_length()), smoothed."""
        self._run_batch = run_batch
        self._observer = observer or _NoObserver()
        self._saturation = saturation or CpuSaturation()
        self._company_s = -COMPANY_MEMORY_S
        """When a call last met company: other calls in flight, or rows queued or running."""
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        """Set when `_enough_rows` are queued: ends a wait for company."""
        self._enough_rows = max_batch_size
        """Rows that end the current wait: a full batch, or the last crowd (below)."""
        self._flush_at = math.inf
        """When the current wait for company ends at the latest (time.monotonic()); inf
        when none is on, or a fixed delay is, which keeps its set length."""
        self._crowd = 0
        """The most calls in flight that a row of the last batch formed by waiting for
        company saw, itself included (0: none yet); the next wait ends as soon as as many
        rows are queued, rather than sit idle for rows that no client has in flight."""
        self._free_instances = asyncio.Semaphore(instances)
        self._executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=f"ort-{name}")
        self._running: set[asyncio.Future[Timed]] = set()
        """Batches handed to the pool and not yet delivered."""
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"batcher-{name}")
        self._closed = False

    async def submit(self, batch: np.ndarray, context: RequestContext = NO_CONTEXT
                     ) -> list[np.ndarray]:
        """Queue a request's rows (split into chunks of max_batch_size); await its outputs.

        Rows still queued past the context's deadline are dropped; a failed batch is logged
        with the trace ids of the requests it carried.
        """
        rows = len(batch)
        if self._closed:
            raise ModelUnavailable("the server is shutting down; retry on another replica")
        if rows > self.max_queue_rows:
            raise QueueFull(f"{rows} items exceed max_queue_rows {self.max_queue_rows}; split the "
                            "request")
        if self._queued_rows + rows > self.max_queue_rows:
            raise QueueFull(f"{self.name} queue full ({self._queued_rows} of "
                            f"{self.max_queue_rows} rows waiting); retry with backoff")
        if context.company or self._queue or self._running:
            self._company_s = time.monotonic()
        if (self._idle(context) and rows <= self.max_batch_size
                and self._runs_inline(rows, self._lone_inline_below_s)):
            return self._run_now(batch, context)
        loop, now = asyncio.get_running_loop(), time.monotonic()
        chunks = [
            _Pending(batch[start : start + self.max_batch_size], context, loop.create_future(),
                     now)
            for start in range(0, rows, self.max_batch_size)
        ]
        self._queue.extend(chunks)
        self._queued_rows += rows
        self._observer.queue_rows(self._queued_rows)
        self._arrived.set()
        if self._queued_rows >= self._enough_rows or self._due_before_the_wait_ends(context):
            self._full.set()
        if len(chunks) == 1:  # the common case: no gather wrapper on the hot path
            return await chunks[0].future
        try:
            parts = await asyncio.gather(*(c.future for c in chunks))
        except BaseException:
            for chunk in chunks:  # one chunk failed or the client left: drop the rest too
                chunk.future.cancel()
            raise
        return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]

    async def close(self) -> None:
        """Stop forming batches; running ones finish, queued ones get ModelUnavailable."""
        self._closed = True
        self._dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._dispatcher
        if self._running:
            await asyncio.wait(self._running)
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(ModelUnavailable("the server is shutting down"))
        self._queued_rows = 0
        self._executor.shutdown(wait=True)

    def _runs_inline(self, rows: int, limit_s: float) -> bool:
        """True when batches of this size measured under `limit_s`: the inline threshold, or
        the wider one for a lone request.

        A thread hop costs the event loop a wake-up and a context switch (about 0.1 ms of
        CPU, measured in docs/benchmarks.md); a batch that computes in less runs on the loop.
        A size class not measured yet runs in the pool once, which measures it; batches are
        timed in the thread that runs them, so the hop never counts as compute.
        """
        recent = self._compute_s.get(rows.bit_length())
        return recent is not None and recent < limit_s

    def _timed(self, inputs: np.ndarray) -> Timed:
        """Run one batch and time it where it runs: the hand-off is not compute."""
        started = time.monotonic()
        outputs = self._run_batch(inputs)
        return outputs, time.monotonic() - started

    async def _dispatch(self) -> None:
        """Form batches while an instance is free; each runs on the loop or in the pool.

        One task forms every batch, so instances never race for the queue, and an instance
        is taken before its batch is formed, so rows that arrive while all are busy join it.
        """
        loop = asyncio.get_running_loop()
        while True:
            await self._free_instances.acquire()
            batch = await self._next_batch()
            if not batch:  # every chunk was cancelled or past its deadline
                self._free_instances.release()
                continue
            inputs = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
            if ((len(inputs) < self.max_batch_size and self._crowded(batch))
                    or not self._runs_inline(len(inputs), self._inline_below_s)):
                running = loop.run_in_executor(self._executor, self._timed, inputs)
                self._running.add(running)
                running.add_done_callback(functools.partial(self._finished, batch))
                continue
            try:
                self._deliver(batch, *self._timed(inputs))
            except Exception as err:
                self._fail(batch, err)
            self._free_instances.release()

    def _finished(self, batch: list[_Pending], running: asyncio.Future[Timed]) -> None:
        """A pool batch is done (called on the loop): free its instance, answer its requests."""
        self._running.discard(running)
        self._free_instances.release()
        self._arrived.set()  # a batch waiting for this one to finish may start now
        try:
            self._deliver(batch, *running.result())
        except (Exception, asyncio.CancelledError) as err:  # the graph failed: fail the batch
            self._fail(batch, err)

    @staticmethod
    def _crowded(batch: list[_Pending]) -> bool:
        """More calls were in flight than this batch holds: a batch with room left runs in the
        pool, so theirs queue and form the next batch meanwhile, rather than wait on the loop
        for it (on the loop no batch ever forms: each call finds the graph idle again)."""
        return max(pending.context.company for pending in batch) >= len(batch)

    def _idle(self, context: RequestContext) -> bool:
        """No other call in flight, nothing queued or running, no delay, and no crowd on a
        full CPU: a batch alone.

        Other calls in flight are company that may join a batch: under load a request
        that ran alone on the loop would keep every other call waiting for it, and the
        next one would find the graph idle again, so no batch would ever form. When calls
        met company lately and the CPU is full, the calls still waiting inside grpc are
        company too, though no handler shows them yet.
        """
        return (context.company == 0 and not self._queue and not self._running
                and self._delay_s == 0 and not self._crowd_on_a_full_cpu())

    def _run_now(self, inputs: np.ndarray, context: RequestContext) -> list[np.ndarray]:
        """Run a lone cheap request on the loop at once, skipping the queue.

        What the queue would do in three turns of the event loop (wake the dispatcher, let
        other handlers queue, wake this handler with the outputs) happens here in none, and
        no rows were waiting that it could have joined.
        """
        if context.deadline_s is not None and time.monotonic() > context.deadline_s:
            raise DeadlineExpired(f"deadline passed before the {self.name} ran; raise the "
                                  "deadline or reduce load")
        self._observer.waited(0.0)
        try:
            outputs, seconds = self._timed(inputs)
        except Exception as err:
            self._log_failure(len(inputs), err, [context])
            raise
        self._record(len(inputs), seconds)
        return outputs

    def _record(self, rows: int, seconds: float) -> None:
        """Smooth the compute time of this size class (for _runs_inline) and report it.

        A run counts at most twice the recent time: one the OS paused for milliseconds (a
        busy neighbour, a preempted thread) would otherwise send the next several requests
        of this size through the pool (seen at concurrency 1 on a shared core)."""
        recent = self._compute_s.get(rows.bit_length(), seconds)
        self._compute_s[rows.bit_length()] = 0.8 * recent + 0.2 * min(seconds, 2 * recent)
        self._observer.executed(rows, seconds)

    def _deliver(self, batch: list[_Pending], outputs: list[np.ndarray], seconds: float) -> None:
        """Record the batch's compute time, then give each request its rows of the outputs."""
        self._record(sum(len(pending.rows) for pending in batch), seconds)
        offset = 0
        for pending in batch:
            end = offset + len(pending.rows)
            if not pending.future.done():  # its client may have gone
                pending.future.set_result([out[offset:end] for out in outputs])
            offset = end

    def _log_failure(self, rows: int, err: BaseException, contexts: list[RequestContext]
                     ) -> None:
        traces = sorted({c.trace_id for c in contexts if c.trace_id})
        logger.error("%s: batch of %d rows failed (traces: %s)", self.name, rows,
                     ", ".join(traces) or "none", exc_info=err)

    def _fail(self, batch: list[_Pending], err: BaseException) -> None:
        """The graph failed: fail this batch's requests and keep serving."""
        self._log_failure(sum(len(pending.rows) for pending in batch), err,
                          [pending.context for pending in batch])
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(err)

    def _worth_starting(self) -> bool:
        """Any queued rows when no batch runs; beside a running batch, only a full one.

        A full batch queued means the cores are the limit, and a batch of its own per core
        is the fastest way through. A smaller one would contend with the running batch and
        the event loop for the cores (without this rule, 9 % fewer 1-row requests/s at
        concurrency 64; docs/benchmarks.md, Instances), so it waits and grows meanwhile.
        """
        if not self._running:
            return bool(self._queue)
        return self._queued_rows >= self.max_batch_size

    def _crowd_on_a_full_cpu(self) -> bool:
        """Calls met company lately and the CPU is full: a row that waits a moment finds
        company, and the CPU has other calls to work on meanwhile."""
        return (time.monotonic() - self._company_s < COMPANY_MEMORY_S
                and self._saturation.saturated())

    async def _next_batch(self) -> list[_Pending]:
        """Wait for work; then, with max_queue_delay_us, until the oldest row has waited that
        long or a full batch is queued; without it, while calls come in company to a full
        CPU, up to SATURATED_WAIT_S or until as many rows are queued as the last crowd."""
        while not self._worth_starting():
            self._arrived.clear()
            await self._arrived.wait()
        await asyncio.sleep(0)  # let handlers that are already runnable queue their rows too
        if self._delay_s > 0:
            await self._wait_for_rows(self._delay_s, self.max_batch_size,
                                      heed_deadlines=False)  # as the user set it
            return self._take()
        if not self._crowd_on_a_full_cpu():
            return self._take()
        await self._wait_for_rows(SATURATED_WAIT_S, min(self._crowd or self.max_batch_size,
                                                        self.max_batch_size),
                                  heed_deadlines=True)
        batch = self._take()
        if batch:
            self._crowd = 1 + max(pending.context.company for pending in batch)
        return batch

    async def _wait_for_rows(self, wait_s: float, enough_rows: int, heed_deadlines: bool
                             ) -> None:
        """Until `enough_rows` are queued or the oldest row has waited `wait_s`; woken once,
        not by every row that arrives. With `heed_deadlines`, never so long that a queued
        row would miss its deadline, and a row arriving with an earlier one ends the wait."""
        flush_at = self._queue[0].enqueued_s + wait_s  # loop.time() is time.monotonic()
        if heed_deadlines:
            deadlines = [p.context.deadline_s for p in self._queue
                         if p.context.deadline_s is not None]
            flush_at = min([flush_at, *(d - self._slowest_batch_s() for d in deadlines)])
        if self._queued_rows >= enough_rows or flush_at <= time.monotonic():
            return
        self._enough_rows = enough_rows
        self._flush_at = flush_at if heed_deadlines else math.inf
        self._full.clear()
        try:
            async with asyncio.timeout_at(flush_at):
                await self._full.wait()
        except TimeoutError:
            pass
        finally:
            self._enough_rows, self._flush_at = self.max_batch_size, math.inf

    def _due_before_the_wait_ends(self, context: RequestContext) -> bool:
        """A wait for rows is on, and this row's deadline comes before it ends (less the time
        a batch takes): the wait must end now."""
        return (self._flush_at < math.inf and context.deadline_s is not None
                and context.deadline_s - self._slowest_batch_s() < self._flush_at)

    def _slowest_batch_s(self) -> float:
        """The longest smoothed compute time of any size class measured: what a row needs
        before its deadline to still be computed in time."""
        return max(self._compute_s.values(), default=0.0)

    def _take(self) -> list[_Pending]:
        """Pop the largest batch that fits; drop chunks cancelled or past their deadline."""
        batch: list[_Pending] = []
        rows = 0
        now = time.monotonic()
        while self._queue and rows + len(self._queue[0].rows) <= self.max_batch_size:
            pending = self._queue.popleft()
            self._queued_rows -= len(pending.rows)
            if pending.future.done():
                continue
            deadline_s = pending.context.deadline_s
            if deadline_s is not None and now > deadline_s:
                pending.future.set_exception(DeadlineExpired(
                    f"deadline passed after {now - pending.enqueued_s:.3f} s in the {self.name} "
                    "queue; raise the deadline or reduce load"))
                continue
            self._observer.waited(now - pending.enqueued_s)
            batch.append(pending)
            rows += len(pending.rows)
        self._observer.queue_rows(self._queued_rows)
        return batch
