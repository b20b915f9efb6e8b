"""--workers: N processes on one port, one /metrics for all, restarts, and a clean drain."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from pathlib import Path

import grpc
import pytest

from service.config import ConfigError, ServerConfig
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import free_port, spawn_server


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


async def _samples(port: int, connections: int, calls: int) -> None:
    for _ in range(connections):  # each new connection may land on another worker
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            for _ in range(calls):
                await stub.Sample(vae_pb2.SampleRequest(count=1, seed=1), wait_for_ready=True,
                                  timeout=60)


def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


async def test_two_workers_one_metrics_endpoint_restart_and_drain(model_repo: Path) -> None:
    metrics_port = free_port()
    proc, port = await spawn_server(model_repo, workers="2", metrics_port=str(metrics_port),
                                    poll_interval_s="0")
    try:
        await _samples(port, connections=8, calls=5)
        workers = _children(proc.pid)
        assert len(workers) == 2
        assert 'vae_requests_total{code="OK",method="Sample"} 40.0' in _scrape(metrics_port)
        os.kill(min(workers), signal.SIGKILL)  # a worker dies: the parent starts another
        async with asyncio.timeout(30):
            while len(_children(proc.pid) - {min(workers)}) < 2:
                await asyncio.sleep(0.05)
        await _samples(port, connections=4, calls=2)  # served while the new one loads
    finally:
        proc.send_signal(signal.SIGTERM)  # the new worker may still be loading: exits 0 too
    assert await asyncio.wait_for(proc.wait(), 30) == 0


def test_workers_need_a_fixed_port() -> None:
    with pytest.raises(ConfigError, match="needs a fixed --port"):
        ServerConfig.from_args(["--workers", "2", "--port", "0"], environ={})
    assert ServerConfig.from_args(["--workers", "auto"], environ={}).workers == 0
