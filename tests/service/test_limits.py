"""Limits come from the settings: message size, a busy port, memory under hostile messages."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from service.fronts.tensors import to_tensor
from service.plane.repository import read_manifest
from service.transport.server import message_limit_bytes
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import ROOT, StartServer, server_config, spawn_server

PEAK_RSS_LIMIT_KIB = 512 * 1024
"""Unbounded would be the 16 x 63 MiB bodies held at once, over 1 GiB. Measured: about
100 MiB on quiet cores, 313 MiB with both cores busy with other work (grpc's flow-control
windows, grown by BDP probing, let more of each body in while the event loop lags)."""


def test_message_limit_is_derived_from_the_model_and_the_queue(model_repo: Path) -> None:
    config = server_config(model_repo)
    limit = message_limit_bytes(read_manifest(model_repo / "vae" / "1"), config)
    assert limit == 4096 * 4 * 64 + 64 * 1024  # max_queue_rows rows of 8x8 float32, plus headroom


async def test_the_largest_admissible_request_fits_and_a_larger_message_does_not(
        start_server: StartServer) -> None:
    running = await start_server()
    rows = np.full((4096, 1, 8, 8), 0.5, np.float32)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        answer = await stub.Denoise(vae_pb2.DenoiseRequest(images=to_tensor(rows)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Denoise(vae_pb2.DenoiseRequest(images=to_tensor(np.concatenate([rows, rows]))))
    assert answer.images.shape[0] == 4096
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_busy_port_is_one_line_and_exit_2(model_repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "service.cli", "--model-repo", str(model_repo),
                               "--port", str(port), "--metrics-port", "-1"], capture_output=True,
                              text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"--port {port}: 127.0.0.1:{port} is in use" in done.stderr


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


async def test_16_hostile_63_mib_messages_keep_memory_bounded(model_repo: Path) -> None:
    proc, port = await spawn_server(model_repo, poll_interval_s="0")
    hostile = vae_pb2.DecodeRequest(latents=vae_pb2.Tensor(shape=[1, 8], data=bytes(63 << 20)))
    try:
        options = [("grpc.max_send_message_length", -1)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            await stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), wait_for_ready=True, timeout=60)
            outcomes = await asyncio.gather(*(stub.Decode(hostile, timeout=60) for _ in range(16)),
                                            return_exceptions=True)
        peak_kib = _peak_rss_kib(proc.pid)
    finally:
        proc.terminate()
        await proc.wait()
    codes = {o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)}
    assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    print(f"peak RSS with 16 hostile 63 MiB messages: {peak_kib / 1024:.0f} MiB")
    assert peak_kib < PEAK_RSS_LIMIT_KIB
