"""Prometheus's own linter accepts the server's /metrics (Debian's prometheus package)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import grpc
import numpy as np
import pytest

from service.fronts.tensors import to_tensor
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import StartServer


async def test_promtool_check_metrics_passes(start_server: StartServer) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: apt-get install prometheus (CI installs it)")
    running = await start_server(metrics_port=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        await stub.Sample(vae_pb2.SampleRequest(count=2, seed=1))
        await stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(np.zeros((1, 8), np.float32))))
    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read()
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert b"vae_requests_total" in text
