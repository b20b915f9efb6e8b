"""The batcher as a function over a queue, with a plain numpy graph."""

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batching import batcher as batcher_module
from service.batching.batcher import DynamicBatcher
from service.context import RequestContext
from service.errors import DeadlineExpired, ModelUnavailable, QueueFull


class Graph:
    """Doubles its input and records the rows of every batch it runs."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[int] = []
        self.seconds = seconds

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        self.batches.append(len(batch))
        time.sleep(self.seconds)
        if np.isnan(batch).any():
            raise ValueError("graph failed")
        return [batch * 2]


def rows(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None]


class FixedSaturation:
    """A CPU that is full, or not, whatever this machine does meanwhile."""

    def __init__(self, full: bool) -> None:
        self.full = full

    def saturated(self) -> bool:
        return self.full


@pytest.fixture(autouse=True)
def spare_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batchers here see a free CPU unless a test passes its own: a busy test machine must not
    change which path a row takes."""
    monkeypatch.setattr(batcher_module, "CpuSaturation", lambda: FixedSaturation(False))


async def test_concurrent_rows_coalesce_within_the_delay() -> None:
    graph = Graph()
    batcher = DynamicBatcher("g", graph, max_batch_size=64, max_queue_delay_us=200_000)
    outs = await asyncio.gather(*(batcher.submit(rows(1, i)) for i in range(10)))
    assert graph.batches == [10]
    assert [float(o[0][0, 0]) for o in outs] == [2.0 * i for i in range(10)]
    await batcher.close()


async def test_full_batch_runs_before_the_delay() -> None:
    graph = Graph()
    batcher = DynamicBatcher("g", graph, max_batch_size=4, max_queue_delay_us=5_000_000)
    started = time.monotonic()
    await asyncio.gather(*(batcher.submit(rows(1)) for _ in range(4)))
    assert graph.batches == [4] and time.monotonic() - started < 2.0
    await batcher.close()


async def test_large_request_is_split_and_reassembled_in_order() -> None:
    graph = Graph()
    batcher = DynamicBatcher("g", graph, max_batch_size=4)
    (out,) = await batcher.submit(rows(10))
    assert graph.batches == [4, 4, 2]
    np.testing.assert_array_equal(out, rows(10) * 2)
    await batcher.close()


async def test_opportunistic_batches_form_while_one_runs() -> None:
    graph = Graph(seconds=0.2)
    batcher = DynamicBatcher("g", graph, max_batch_size=64)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.sleep(0.05)
    await asyncio.gather(first, *(batcher.submit(rows(1)) for _ in range(5)))
    assert graph.batches == [1, 5]
    await batcher.close()


async def test_queue_full_is_immediate_and_bounded() -> None:
    batcher = DynamicBatcher("g", Graph(), max_batch_size=64, max_queue_delay_us=500_000,
                             max_queue_rows=8)
    waiting = asyncio.create_task(batcher.submit(rows(5)))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match="queue full"):
        await batcher.submit(rows(5))
    with pytest.raises(QueueFull, match="exceed max_queue_rows 8"):
        await batcher.submit(rows(9))
    assert len((await waiting)[0]) == 5
    await batcher.close()


async def test_rows_past_their_deadline_are_dropped_before_compute() -> None:
    graph = Graph()
    batcher = DynamicBatcher("g", graph, max_batch_size=64, max_queue_delay_us=100_000)
    with pytest.raises(DeadlineExpired, match="deadline passed"):
        await batcher.submit(rows(3), context=RequestContext(time.monotonic() + 0.01))
    assert graph.batches == []
    await batcher.close()


async def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    graph = Graph()
    batcher = DynamicBatcher("g", graph, max_batch_size=64)
    with pytest.raises(ValueError, match="graph failed"):
        await batcher.submit(np.full((2, 1), np.nan, np.float32))
    (out,) = await batcher.submit(rows(2))
    np.testing.assert_array_equal(out, rows(2) * 2)
    await batcher.close()


class ThreadRecorder(Graph):
    """A Graph that also records the thread each batch ran on."""

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__(seconds)
        self.threads: list[str] = []

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        self.threads.append(threading.current_thread().name)
        return super().__call__(batch)


async def test_cheap_batches_run_on_the_event_loop_once_measured() -> None:
    graph = ThreadRecorder()
    batcher = DynamicBatcher("g", graph, max_batch_size=64, inline_below_us=50_000)
    for _ in range(3):
        (out,) = await batcher.submit(rows(2))
        np.testing.assert_array_equal(out, rows(2) * 2)
    loop_thread = threading.current_thread().name
    assert graph.threads[0].startswith("ort-g") and graph.threads[1:] == [loop_thread] * 2
    await batcher.submit(rows(40))  # another size class: measured in the pool first
    assert graph.threads[-1].startswith("ort-g")
    await batcher.close()


async def test_slow_batches_stay_off_the_event_loop() -> None:
    graph = ThreadRecorder(seconds=0.01)
    batcher = DynamicBatcher("g", graph, max_batch_size=64, inline_below_us=1_000)
    for _ in range(3):
        await batcher.submit(rows(2))
    assert all(name.startswith("ort-g") for name in graph.threads)
    await batcher.close()


class Rendezvous(Graph):
    """A Graph whose batches each wait until `parties` batches run at once."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.together = threading.Barrier(parties, timeout=10)

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        self.together.wait()  # breaks, failing the batch, unless the batches overlap
        return super().__call__(batch)


async def test_instances_run_batches_side_by_side() -> None:
    graph = Rendezvous(parties=2)
    batcher = DynamicBatcher("g", graph, max_batch_size=4, instances=2)
    (out,) = await batcher.submit(rows(8))  # two full batches, run at the same time
    np.testing.assert_array_equal(out, rows(8) * 2)
    assert graph.batches == [4, 4]
    await batcher.close()


async def test_close_lets_a_running_batch_finish_and_refuses_queued_rows() -> None:
    batcher = DynamicBatcher("g", Graph(seconds=0.2), max_batch_size=2)
    running = asyncio.create_task(batcher.submit(rows(2)))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(batcher.submit(rows(2)))
    await asyncio.sleep(0)
    await batcher.close()
    np.testing.assert_array_equal((await running)[0], rows(2) * 2)
    with pytest.raises(ModelUnavailable, match="shutting down"):
        await queued


async def test_a_free_instance_waits_for_rows_while_a_batch_runs() -> None:
    graph = Graph(seconds=0.2)
    batcher = DynamicBatcher("g", graph, max_batch_size=64, max_queue_delay_us=1_000,
                             instances=2)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.sleep(0.05)  # the first batch runs; the queue is empty, one instance free
    (out,) = await asyncio.wait_for(batcher.submit(rows(3)), 5)
    np.testing.assert_array_equal(out, rows(3) * 2)
    await first
    assert graph.batches == [1, 3]
    await batcher.close()


@pytest.fixture
def lone_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any measured size runs on the loop when alone, however slow this machine is today."""
    monkeypatch.setattr(batcher_module, "LONE_INLINE_BELOW_S", 1.0)


@pytest.mark.usefixtures("lone_on_the_loop")
async def test_a_lone_request_runs_at_once_with_deadline_and_failure_kept() -> None:
    graph = ThreadRecorder(seconds=0.002)  # through the queue it would run in the pool
    batcher = DynamicBatcher("g", graph, max_batch_size=64, inline_below_us=1_000)
    await batcher.submit(rows(2))  # measured in the pool
    with pytest.raises(DeadlineExpired, match="before the g ran"):
        await batcher.submit(rows(2), context=RequestContext(time.monotonic() - 1))
    with pytest.raises(ValueError, match="graph failed"):
        await batcher.submit(np.full((2, 1), np.nan, np.float32))
    (out,) = await batcher.submit(rows(3, start=5))
    np.testing.assert_array_equal(out, rows(3, start=5) * 2)
    assert graph.batches == [2, 2, 3]  # the expired request never reached the graph
    assert graph.threads[1:] == [threading.current_thread().name] * 2
    await batcher.close()


@pytest.mark.usefixtures("lone_on_the_loop")
async def test_a_lone_request_runs_on_the_loop_but_one_with_company_queues() -> None:
    graph = ThreadRecorder(seconds=0.002)
    batcher = DynamicBatcher("g", graph, max_batch_size=64, inline_below_us=1_000)
    await batcher.submit(rows(1))  # measured in the pool
    await batcher.submit(rows(1))  # alone: on the loop
    await batcher.submit(rows(1), RequestContext(company=3))  # others in flight: queued
    loop_thread = threading.current_thread().name
    assert graph.threads[0].startswith("ort-g") and graph.threads[1] == loop_thread
    assert graph.threads[2].startswith("ort-g")
    await batcher.close()


async def test_beside_a_running_batch_only_a_full_one_starts() -> None:
    graph = Graph(seconds=0.2)
    batcher = DynamicBatcher("g", graph, max_batch_size=4, instances=2)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.sleep(0.05)  # the first batch runs; one instance is free
    second = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.sleep(0.05)  # one row queued: not a full batch, so it waits
    third = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.gather(first, second, third)
    assert graph.batches == [1, 2]
    await batcher.close()


@pytest.mark.usefixtures("lone_on_the_loop")
async def test_a_batch_with_room_and_company_runs_in_the_pool_so_the_next_one_forms() -> None:
    graph = ThreadRecorder(seconds=0.002)
    batcher = DynamicBatcher("g", graph, max_batch_size=64, inline_below_us=1_000_000)
    await batcher.submit(rows(1))  # measured: from now on cheap enough for the loop
    crowd = RequestContext(company=7)
    await asyncio.gather(*(batcher.submit(rows(1), crowd) for _ in range(8)))
    assert all(name.startswith("ort-g") for name in graph.threads[1:])  # not on the loop
    assert len(graph.batches) < 9  # and the calls that waited were batched together
    await batcher.close()


async def test_on_a_full_cpu_a_row_waits_for_company_once_calls_come_in_company() -> None:
    graph = ThreadRecorder()
    batcher = DynamicBatcher("g", graph, max_batch_size=64, inline_below_us=1_000_000,
                             saturation=FixedSaturation(True))
    await batcher.submit(rows(1), RequestContext(company=1))  # measured; calls met company
    first = asyncio.create_task(batcher.submit(rows(1, 1)))
    await asyncio.sleep(0.0005)  # well within SATURATED_WAIT_S: the first row still waits
    second = asyncio.create_task(batcher.submit(rows(1, 2)))
    outs = await asyncio.gather(first, second)
    assert graph.batches == [1, 2]  # alone, it would have run at once, on its own
    assert [float(out[0][0, 0]) for out in outs] == [2.0, 4.0]
    await batcher.close()


@pytest.mark.parametrize("full, company", [(False, 1), (True, 0)],
                         ids=["spare CPU", "a lone client on a full CPU"])
async def test_a_lone_row_runs_at_once_with_spare_cpu_or_no_company_lately(
        full: bool, company: int) -> None:
    graph = ThreadRecorder(seconds=0.001)
    batcher = DynamicBatcher("g", graph, max_batch_size=64, inline_below_us=1_000_000,
                             saturation=FixedSaturation(full))
    await batcher.submit(rows(1), RequestContext(company=company))  # measured in the pool
    await batcher.submit(rows(1))
    assert graph.threads[-1] == threading.current_thread().name  # on the loop, not queued
    await batcher.close()


async def test_a_wait_for_company_ends_once_as_many_rows_as_the_last_crowd_are_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batcher_module, "SATURATED_WAIT_S", 60.0)  # only the crowd ends it
    graph = Graph()
    batcher = DynamicBatcher("g", graph, max_batch_size=4, saturation=FixedSaturation(True))
    three_in_flight = RequestContext(company=2)
    await batcher.submit(rows(4), three_in_flight)  # a full batch: no wait; crowd of 3 seen
    outs = await asyncio.wait_for(asyncio.gather(
        *(batcher.submit(rows(1, i), three_in_flight) for i in range(3))), 5)
    assert graph.batches == [4, 3]
    assert [float(out[0][0, 0]) for out in outs] == [0.0, 2.0, 4.0]
    await batcher.close()


class OneSlowRun(ThreadRecorder):
    """A ThreadRecorder whose second run takes `pause` seconds: a thread the OS paused."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        self.seconds = self.pause if len(self.batches) == 1 else 0.0
        return super().__call__(batch)


async def test_one_paused_run_does_not_send_the_next_lone_requests_to_the_pool(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batcher_module, "LONE_INLINE_BELOW_S", 0.01)
    graph = OneSlowRun(pause=0.2)
    batcher = DynamicBatcher("g", graph, max_batch_size=64, inline_below_us=1_000)
    for _ in range(3):  # measured in the pool; paused on the loop; on the loop again
        await batcher.submit(rows(1))
    loop_thread = threading.current_thread().name
    assert graph.threads[0].startswith("ort-g") and graph.threads[1:] == [loop_thread] * 2
    await batcher.close()


async def test_no_wait_for_company_outlasts_a_queued_rows_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batcher_module, "SATURATED_WAIT_S", 60.0)
    graph = Graph()
    batcher = DynamicBatcher("g", graph, max_batch_size=4, saturation=FixedSaturation(True))
    await batcher.submit(rows(4), RequestContext(company=3))  # full: no wait; a crowd of 4
    patient = asyncio.create_task(batcher.submit(rows(1, 1)))  # waits: no deadline of its own
    await asyncio.sleep(0.01)
    hurried = RequestContext(deadline_s=time.monotonic() + 0.2)
    (out,) = await asyncio.wait_for(batcher.submit(rows(1, 2), hurried), 5)  # ends the wait
    np.testing.assert_array_equal(out, rows(1, 2) * 2)
    await patient
    assert graph.batches == [4, 2]
    await batcher.close()
