"""Model versions changing under load: mixed traffic, steady versus a new version every 2 s.

python -m bench.swap_bench --repo models --model vae --seconds 30

Starts `vae-serve` on a copy of the newest version (127.0.0.1, a free port, polling every
0.5 s), runs 32 closed-loop clients mixing Encode, Decode, Sample and Denoise for --seconds
steady, then --seconds more while a copy of the version is published under the next number
every 2 s (its manifest renumbered, then an atomic rename, as vae-export does). Prints a
markdown report: requests/s, p50/p99, failed requests, time from a folder appearing to the
switch, and the server's RSS before, during and after. Takes about 2 x --seconds plus 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from service.fronts.tensors import to_tensor
from service.help_format import DefaultsHelpFormatter
from service.plane.repository import MANIFEST, published_versions, read_manifest
from service.vae.v1 import vae_pb2, vae_pb2_grpc

CONCURRENCY = 32
PUBLISH_EVERY_S = 2.0
POLL_INTERVAL_S = 0.5


@dataclass
class Phase:
    latencies_s: list[float] = field(default_factory=list)
    failures: int = 0
    rss_kib: list[int] = field(default_factory=list)
    switch_s: list[float] = field(default_factory=list)


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def _requests(image_shape: tuple[int, ...], latent_dim: int) -> list[tuple[str, object]]:
    rng = np.random.default_rng(0)
    x = rng.random((4, *image_shape), dtype=np.float32)
    z = rng.standard_normal((4, latent_dim)).astype(np.float32)
    return [("Encode", vae_pb2.EncodeRequest(images=to_tensor(x))),
            ("Decode", vae_pb2.DecodeRequest(latents=to_tensor(z))),
            ("Sample", vae_pb2.SampleRequest(count=4, seed=1)),
            ("Denoise", vae_pb2.DenoiseRequest(images=to_tensor(x)))]


async def _load(stub: vae_pb2_grpc.VaeServiceStub, requests: list[tuple[str, object]],
                phase: Phase, stop_at: float) -> None:
    async def client(k: int) -> None:
        calls = k
        while time.monotonic() < stop_at:
            method, request = requests[calls % len(requests)]
            calls += 1
            started = time.perf_counter()
            try:
                await getattr(stub, method)(request, timeout=30)
            except grpc.aio.AioRpcError:
                phase.failures += 1
                continue
            phase.latencies_s.append(time.perf_counter() - started)

    await asyncio.gather(*(client(k) for k in range(CONCURRENCY)))


async def _publish(stub: vae_pb2_grpc.VaeServiceStub, model_dir: Path, source: Path, pid: int,
                   phase: Phase, stop_at: float) -> None:
    number = max(published_versions(model_dir.parent, model_dir.name))
    while time.monotonic() + PUBLISH_EVERY_S < stop_at:
        number += 1
        staging = model_dir / f".tmp-{number}"
        shutil.copytree(source, staging)
        manifest = json.loads((staging / MANIFEST).read_text())
        (staging / MANIFEST).write_text(json.dumps({**manifest, "version": number}))
        appeared = time.monotonic()
        staging.rename(model_dir / str(number))
        while (await stub.GetModelInfo(vae_pb2.GetModelInfoRequest())).version != number:
            await asyncio.sleep(0.01)
        phase.switch_s.append(time.monotonic() - appeared)
        phase.rss_kib.append(_rss_kib(pid))
        await asyncio.sleep(max(0.0, appeared + PUBLISH_EVERY_S - time.monotonic()))


def _row(name: str, phase: Phase, seconds: float) -> str:
    ms = np.asarray(phase.latencies_s or [0.0]) * 1000
    return (f"| {name} | {len(phase.latencies_s) / seconds:.0f} | {np.percentile(ms, 50):.2f} | "
            f"{np.percentile(ms, 99):.2f} | {phase.failures} |")


async def run(repo: Path, model: str, seconds: float) -> str:
    source = repo / model / str(max(published_versions(repo, model)))
    manifest = read_manifest(source)
    with tempfile.TemporaryDirectory() as scratch, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        model_dir = Path(scratch) / model
        shutil.copytree(source, model_dir / "1")
        server = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--model-repo", scratch, "--model-name", model,
             "--port", str(port), "--metrics-port", "-1", "--poll-interval-s",
             str(POLL_INTERVAL_S), "--log-level", "WARNING"])
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = vae_pb2_grpc.VaeServiceStub(channel)
                await stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), wait_for_ready=True,
                                        timeout=60)
                requests = _requests(tuple(manifest.image_shape), manifest.latent_dim)
                rss_before = _rss_kib(server.pid)
                steady, swapping = Phase(), Phase()
                await _load(stub, requests, steady, time.monotonic() + seconds)
                stop_at = time.monotonic() + seconds
                await asyncio.gather(_load(stub, requests, swapping, stop_at),
                                     _publish(stub, model_dir, source, server.pid, swapping,
                                              stop_at))
                await asyncio.sleep(1.0)
                rss_after = _rss_kib(server.pid)
        finally:
            server.terminate()
            server.wait(30)
    switch_ms = np.asarray(swapping.switch_s) * 1000
    return "\n".join([
        f"Mixed Encode/Decode/Sample/Denoise (4 items each), {CONCURRENCY} clients, {seconds:.0f} s "
        f"per phase, model {model} ({manifest.arch}, image {list(manifest.image_shape)}).",
        "",
        "| phase | requests/s | p50 ms | p99 ms | failed requests |",
        "|---|---|---|---|---|",
        _row("steady", steady, seconds),
        _row(f"new version every {PUBLISH_EVERY_S:.0f} s", swapping, seconds),
        "",
        f"- versions published: {len(switch_ms)}; folder appearing to switch (poll every "
        f"{POLL_INTERVAL_S} s): median {np.median(switch_ms):.0f} ms, max {switch_ms.max():.0f} ms",
        f"- server RSS: before {rss_before / 1024:.1f} MiB, during max "
        f"{max(swapping.rss_kib) / 1024:.1f} MiB, after {rss_after / 1024:.1f} MiB",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.swap_bench", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    p.add_argument("--model", default="vae", help="model name; its newest version is used")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    args = p.parse_args(argv)
    if not published_versions(args.repo, args.model):
        p.error(f"no published version of {args.model} in {args.repo}; run make export first")
    print(asyncio.run(run(args.repo, args.model, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
