"""SIGTERM as a rolling update needs it: NOT_SERVING, serving on for --drain-delay-s, then
GOAWAY; a client balancing over two replicas loses no call (docs/serving.md, Stopping)."""

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.drain_bench import HEALTH_CHECKED, ROUND_ROBIN, round_robin_target, steady_calls
from service.config import ConfigError, ServerConfig
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import spawn_server

GRACE_S = 60.0
"""Far more than any short call needs: a stop that waits for it is a stop that hangs."""
CALLERS = 8


async def _ready(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                        wait_for_ready=True, timeout=120)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()


async def test_sigterm_to_one_of_two_replicas_loses_no_call(model_repo: Path) -> None:
    """Two clients balance over both replicas: one watches health (as VaeClient does), one does
    not. The first loses nothing; the second only calls grpc's core cancels in transit at the
    GOAWAY, at most one per caller; neither is ever refused by the stopping replica."""
    started = [await spawn_server(model_repo, drain_delay_s="1", grace_s=str(GRACE_S))
               for _ in range(2)]
    (proc, _), ports = started[0], [port for _, port in started]
    target = round_robin_target(ports)
    try:
        await asyncio.gather(*(_ready(port) for port in ports))
        async with grpc.aio.insecure_channel(target, options=HEALTH_CHECKED) as watching, \
                grpc.aio.insecure_channel(target, options=ROUND_ROBIN) as plain:
            stop = asyncio.Event()
            traffic = asyncio.gather(*(steady_calls(vae_pb2_grpc.VaeServiceStub(channel), 8,
                                                    CALLERS, stop)
                                       for channel in (watching, plain)))
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            exit_code = await asyncio.wait_for(proc.wait(), 2 * GRACE_S)
            stop_s = time.monotonic() - signalled
            await asyncio.sleep(0.5)  # the other replica keeps answering alone
            stop.set()
            watched, unwatched = await traffic
    finally:
        for other, _ in started:
            await _stop(other)
    assert set(watched) == {"OK"} and watched["OK"] > 100, watched
    assert set(unwatched) <= {"OK", "CANCELLED"} and unwatched["CANCELLED"] <= CALLERS, unwatched
    assert exit_code == 0
    assert stop_s < GRACE_S / 2  # no waiting for a lull that steady traffic never gives


async def test_pick_first_calls_in_flight_and_during_the_delay_complete(model_repo: Path) -> None:
    proc, port = await spawn_server(model_repo, max_queue_delay_us="1000000", drain_delay_s="3",
                                    grace_s=str(GRACE_S))
    try:
        await _ready(port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            in_flight = [asyncio.ensure_future(stub.Sample(vae_pb2.SampleRequest(count=2, seed=s)))
                         for s in range(1, 9)]
            await asyncio.sleep(0.3)  # all 8 now wait in the queue for the 1 s batching delay
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="vae.v1.VaeService"), timeout=5)
            during_delay = await stub.Sample(vae_pb2.SampleRequest(count=1, seed=9), timeout=5)
            done = await asyncio.gather(*in_flight)
        exit_code = await asyncio.wait_for(proc.wait(), GRACE_S / 2)
    finally:
        await _stop(proc)
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert [r.seed for r in done] == list(range(1, 9)) and during_delay.seed == 9
    assert exit_code == 0


@pytest.mark.parametrize("delay", ["-1", "soon"])
def test_drain_delay_must_be_a_number_of_seconds(delay: str) -> None:
    with pytest.raises(ConfigError, match="VAE_SERVE_DRAIN_DELAY_S"):
        ServerConfig.from_args([], {"VAE_SERVE_DRAIN_DELAY_S": delay})
