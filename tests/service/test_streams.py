"""Long-lived streams (health Watch, reflection) have a bound of their own: beyond it they are
refused and counted, and model calls keep their whole budget (docs/serving.md, Overload)."""

import asyncio

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.fronts.tensors import to_tensor
from service.transport.server import RunningServer
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import StartServer
from tests.service.test_tls import Pki, pki, tls_settings  # noqa: F401  (pki is a fixture)

SMALL = {"max_queue_rows": 1, "max_batch_size": 1, "instances": 1}
"""max_calls 4: grpc's concurrency limit of the server, sized from it, is a few hundred."""
WATCHES = 300


async def _first_answers(channel: grpc.aio.Channel, count: int
                         ) -> tuple[list[grpc.aio.UnaryStreamCall], list[grpc.aio.AioRpcError]]:
    """Open `count` Watch streams on one connection: (those answered, those refused)."""
    health = health_pb2_grpc.HealthStub(channel)
    calls = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(count)]
    firsts = await asyncio.gather(*(call.read() for call in calls), return_exceptions=True)
    refused = [first for first in firsts if isinstance(first, grpc.aio.AioRpcError)]
    assert all(first.status == health_pb2.HealthCheckResponse.SERVING
               for first in firsts if not isinstance(first, BaseException)), firsts
    answered = [c for c, first in zip(calls, firsts, strict=True)
                if not isinstance(first, BaseException)]
    return answered, refused


def _value(running: RunningServer, name: str, **labels: str) -> float | None:
    value: float | None = running.metrics.registry.get_sample_value(name, labels)
    return value


async def test_watch_streams_beyond_the_bound_are_refused_and_model_calls_still_succeed(
        start_server: StartServer) -> None:
    running = await start_server(max_streams=16, **SMALL)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        open_, refused = await _first_answers(channel, WATCHES)
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        decoded = await stub.Decode(vae_pb2.DecodeRequest(
            latents=to_tensor(np.zeros((1, 8), np.float32))), timeout=30)
        sampled = await stub.Sample(vae_pb2.SampleRequest(count=1, seed=1), timeout=30)
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        reflection_code = await reflection.code()
        assert _value(running, "vae_streams_open", port="grpc") == 16
        for call in open_:
            call.cancel()
    assert len(decoded.images.data) and sampled.seed == 1
    assert len(open_) == 16 and len(refused) == WATCHES - 16
    assert {err.code() for err in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert "--max-streams" in (refused[0].details() or "")
    assert reflection_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _value(running, "vae_requests_total", method="Watch",
                  code="RESOURCE_EXHAUSTED") == WATCHES - 16
    assert _value(running, "vae_requests_total", method="ServerReflectionInfo",
                  code="RESOURCE_EXHAUSTED") == 1


async def test_the_plaintext_health_port_bounds_its_watch_streams(start_server: StartServer,
                                                                 pki: Pki) -> None:  # noqa: F811
    running = await start_server(max_streams=8, **tls_settings(pki.server), **SMALL)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.health_port}") as channel:
        open_, refused = await _first_answers(channel, 40)
        assert _value(running, "vae_streams_open", port="health") == 8
        for call in open_:
            call.cancel()
    assert len(open_) == 8 and len(refused) == 32
    assert {err.code() for err in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}


async def test_stop_ends_open_watch_streams_after_not_serving(start_server: StartServer) -> None:
    running = await start_server()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.ensure_future(running.stop(grace_s=120))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        code = await asyncio.wait_for(watch.code(), 60)  # not the 120 s of grace
        await asyncio.wait_for(stopping, 60)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert _value(running, "vae_streams_open", port="grpc") == 0
