"""Real servers on 127.0.0.1 with graphs exported from the session's trained digits models."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from service.config import ServerConfig
from service.server import RunningServer, build_server
from service.vae.v1 import vae_pb2_grpc

StartServer = Callable[..., Awaitable[RunningServer]]


def server_config(repo: Path, **overrides: object) -> ServerConfig:
    base = ServerConfig(model_repo=repo, port=0, metrics_port=-1, device="cpu", grace_s=2.0)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def start_server(model_repo: Path) -> AsyncIterator[StartServer]:
    """Start servers with overridden settings; all are stopped when the test ends."""
    started: list[RunningServer] = []

    async def start(**overrides: object) -> RunningServer:
        running = await build_server(server_config(model_repo, **overrides))
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(1.0)


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server()


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> vae_pb2_grpc.VaeServiceStub:
    return vae_pb2_grpc.VaeServiceStub(channel)
