"""CpuSaturation reads this process's CPU clocks against the wall clock, with hysteresis."""

import time

import pytest

from service.batching.saturation import CpuSaturation, _cpu_clocks


class Clocks:
    """A wall clock and (process, thread) CPU clocks the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.process = self.thread = 0.0
        self.cpu_reads = 0

    def wall(self) -> float:
        return self.now

    def cpu(self) -> tuple[float, float]:
        self.cpu_reads += 1
        return self.process, self.thread

    def spend(self, seconds: float, process_share: float, thread_share: float,
              cores: int) -> None:
        self.now += seconds
        self.process += seconds * process_share * cores
        self.thread += seconds * thread_share


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def monitor(clocks: Clocks, cores: int = 2) -> CpuSaturation:
    return CpuSaturation(window_s=0.05, cores=cores, wall=clocks.wall, cpu=clocks.cpu)


def test_full_cores_saturate_and_only_a_quiet_window_frees_them(clocks: Clocks) -> None:
    cpu = monitor(clocks)
    clocks.spend(0.05, process_share=0.95, thread_share=0.5, cores=2)
    assert cpu.saturated()
    clocks.spend(0.05, process_share=0.7, thread_share=0.5, cores=2)  # between the shares
    assert cpu.saturated()
    clocks.spend(0.05, process_share=0.5, thread_share=0.5, cores=2)
    assert not cpu.saturated()
    clocks.spend(0.05, process_share=0.7, thread_share=0.5, cores=2)  # not enough to enter
    assert not cpu.saturated()


def test_a_busy_event_loop_saturates_a_machine_with_idle_cores(clocks: Clocks) -> None:
    cpu = monitor(clocks, cores=16)
    clocks.spend(0.05, process_share=0.1, thread_share=0.95, cores=16)
    assert cpu.saturated()


def test_the_cpu_clocks_are_read_once_per_window(clocks: Clocks) -> None:
    cpu = monitor(clocks)
    reads = clocks.cpu_reads
    for _ in range(100):
        clocks.spend(0.0001, process_share=1.0, thread_share=1.0, cores=2)
        cpu.saturated()
    assert clocks.cpu_reads == reads  # 10 ms of calls: still inside the first window
    assert not cpu.saturated()  # and the answer holds until a window has passed
    clocks.spend(0.05, process_share=1.0, thread_share=1.0, cores=2)
    assert cpu.saturated() and clocks.cpu_reads == reads + 1


def test_the_loop_thread_counts_its_time_running_and_waiting_for_a_core() -> None:
    deadline = time.thread_time() + 0.05
    while time.thread_time() < deadline:  # 50 ms of this thread's CPU
        pass
    _, demand = _cpu_clocks()
    assert demand >= 0.9 * time.thread_time()  # at least its CPU time: waiting only adds
