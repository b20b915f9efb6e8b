"""Calls the server cannot take are refused with a status and a message, and counted; none is
dropped as a bare CANCELLED under a burst (docs/serving.md, Overload). At SIGTERM, see
test_drain.py."""

import asyncio
import collections
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import StartServer, spawn_server

Outcome = tuple[str, str]


async def _sample(stub: vae_pb2_grpc.VaeServiceStub, seed: int) -> Outcome:
    try:
        await stub.Sample(vae_pb2.SampleRequest(count=1, seed=seed), timeout=20)
        return "OK", ""
    except grpc.aio.AioRpcError as err:
        return err.code().name, err.details() or ""


def _channels(port: int, n: int) -> list[grpc.aio.Channel]:
    """Separate connections, as separate clients would have."""
    return [grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                      options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(n)]


async def test_a_burst_beyond_the_queue_is_refused_with_a_message_and_counted(
        start_server: StartServer) -> None:
    running = await start_server(max_queue_rows=64)
    channels = _channels(running.port, 4)
    stubs = [vae_pb2_grpc.VaeServiceStub(c) for c in channels]
    outcomes = await asyncio.gather(*(_sample(stubs[i % 4], i + 1) for i in range(4000)))
    for channel in channels:
        await channel.close()
    codes = collections.Counter(code for code, _ in outcomes)
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert all(message for code, message in outcomes if code != "OK")
    counted = {code: running.metrics.registry.get_sample_value(
        "vae_requests_total", {"method": "Sample", "code": code}) for code in codes}
    assert counted == codes and sum(codes.values()) == 4000



async def _client(stub: vae_pb2_grpc.VaeServiceStub, seed: int, stopped: asyncio.Event
                  ) -> list[Outcome]:
    """Send one call after another until the server refuses one after SIGTERM."""
    outcomes: list[Outcome] = []
    while not (stopped.is_set() and outcomes and outcomes[-1][0] != "OK"):
        outcomes.append(await _sample(stub, seed))
        if len(outcomes) > 1000:
            break
    return outcomes


async def test_sigterm_under_load_from_one_replica_ends_every_call_with_a_status(
        model_repo: Path) -> None:
    """256 pick_first callers and no other replica: calls end OK, or UNAVAILABLE once the
    channel finds the port closed, or CANCELLED when grpc's server met them in transit as the
    GOAWAY went out (docs/serving.md, Stopping)."""
    proc, port = await spawn_server(model_repo, grace_s="5")
    channels = _channels(port, 8)
    try:
        health = health_pb2_grpc.HealthStub(channels[0])
        await health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=60)
        stubs = [vae_pb2_grpc.VaeServiceStub(c) for c in channels]
        stopped = asyncio.Event()
        clients = [asyncio.ensure_future(_client(stubs[i % 8], i + 1, stopped))
                   for i in range(256)]
        await asyncio.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        stopped.set()
        outcomes = [o for client in await asyncio.gather(*clients) for o in client]
        await asyncio.wait_for(proc.wait(), 60)
    finally:
        for channel in channels:
            await channel.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)
    codes = collections.Counter(code for code, _ in outcomes)
    assert set(codes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, codes
    assert codes["OK"] > 256 and all(message for code, message in outcomes if code != "OK")
    assert proc.returncode == 0
