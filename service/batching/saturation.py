"""CpuSaturation: whether the CPU a call needs has been full lately, read from this process.

A grpc.aio server takes calls one at a time from its event loop, and each call's path costs
several times a row's compute (docs/benchmarks.md, "Pinned one-core peers"), so under load
rows reach a batcher one by one. With spare CPU a row should run at once (latency first);
once the CPU is full, nothing is gained by running it at once, and waiting a moment for
company is the only way a batch forms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from service.cores import usable_cores

SATURATED_SHARE = 0.9
"""Busy share of a window that makes the CPU count as full."""
RELEASED_SHARE = 0.6
"""Busy share below which a full CPU counts as free again. Between the two the state holds:
rows that wait for company leave the loop idle for moments, which would otherwise flip a
busy server back and forth every window (at concurrency 8 on one core it does)."""
WINDOW_S = 0.05
"""Time between two readings of the CPU clocks; between them the last answer holds."""


class Saturation(Protocol):
    """What a batcher asks before it runs a lone row at once or flushes a partial batch."""

    def saturated(self) -> bool: ...


class CpuSaturation:
    """Full once, over a window, either this process used SATURATED_SHARE of the cores it may
    use (service/cores.py: a CPU limit counts), or the thread that asks (the event loop) was
    running or waiting for a core that share of the time: the first is a core-bound server,
    the second a loop-bound one, on a many-core machine or on a core it shares with other
    processes (a load generator, a neighbour), where its own CPU time never looks full.
    Free again once both shares fall below RELEASED_SHARE.

    Call `saturated` from the event loop's thread only (it reads that thread's CPU clock).
    """

    def __init__(self, share: float = SATURATED_SHARE, release_share: float = RELEASED_SHARE,
                 window_s: float = WINDOW_S, cores: int | None = None,
                 wall: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], tuple[float, float]] | None = None) -> None:
        self.share, self.release_share = share, release_share
        self.window_s = window_s
        self.cores = cores or usable_cores()
        self._wall, self._cpu = wall, cpu or _cpu_clocks
        self._since = self._wall()
        self._cpu_since = self._cpu()
        self._full = False

    def saturated(self) -> bool:
        """True when the last full window was busy; the CPU clocks (system calls, unlike the
        wall clock) are read at most once per window."""
        now = self._wall()
        wall = now - self._since
        if wall >= self.window_s:
            cpu = self._cpu()
            process_share = (cpu[0] - self._cpu_since[0]) / (wall * self.cores)
            loop_demand = (cpu[1] - self._cpu_since[1]) / wall
            busy = max(process_share, loop_demand)
            self._full = busy >= (self.release_share if self._full else self.share)
            self._since, self._cpu_since = now, cpu
        return self._full


SCHEDSTAT = "/proc/thread-self/schedstat"
"""Linux: the calling thread's nanoseconds running, then waiting in a run queue."""


def _cpu_clocks() -> tuple[float, float]:
    """(this process's CPU seconds, this thread's seconds running or waiting to run); where
    the scheduler's statistics cannot be read, the thread's CPU seconds alone."""
    try:
        with open(SCHEDSTAT) as stat:
            running_ns, waiting_ns = stat.read().split()[:2]
        demand = (int(running_ns) + int(waiting_ns)) / 1e9
    except (OSError, ValueError):
        demand = time.thread_time()
    return time.process_time(), demand
