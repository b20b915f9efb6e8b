"""Closed-loop gRPC load generator, run in its own process: bounded in requests and seconds.

python -m bench.load --target 127.0.0.1:50051 --method Decode --items 1 --concurrency 64
prints one JSON line: requests, errors, seconds, requests_per_s, items_per_s, p50_ms, p99_ms.
Needs a server already listening at --target (loopback only); runs --seconds (default 5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import numpy as np

from service.help_format import DefaultsHelpFormatter
from service.tensors import to_tensor
from service.vae.v1 import vae_pb2, vae_pb2_grpc

CHANNELS = 4
"""Client connections; requests are spread over them round-robin."""


def build_request(method: str, items: int, image_shape: tuple[int, ...], latent_dim: int
                  ) -> object:
    rng = np.random.default_rng(0)
    if method == "Decode":
        z = rng.standard_normal((items, latent_dim)).astype(np.float32)
        return vae_pb2.DecodeRequest(latents=to_tensor(z))
    x = rng.random((items, *image_shape), dtype=np.float32)
    return vae_pb2.EncodeRequest(images=to_tensor(x))


async def run_load(target: str, method: str, items: int, concurrency: int, seconds: float,
                   max_requests: int) -> dict[str, float]:
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(CHANNELS)]
    stubs = [vae_pb2_grpc.VaeServiceStub(c) for c in channels]
    info = await stubs[0].GetModelInfo(vae_pb2.GetModelInfoRequest())
    request = build_request(method, items, tuple(info.image_shape), info.latent_dim)
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.monotonic() + seconds

    async def worker(index: int) -> None:
        nonlocal errors, sent
        call = getattr(stubs[index % CHANNELS], method)
        while time.monotonic() < stop_at and sent < max_requests:
            sent += 1
            started = time.perf_counter()
            try:
                await call(request, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(stubs[i % CHANNELS].GetModelInfo(vae_pb2.GetModelInfoRequest())
                           for i in range(CHANNELS)))
    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    for channel in channels:
        await channel.close()
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {"requests": len(latencies), "errors": errors, "seconds": elapsed,
            "requests_per_s": len(latencies) / elapsed, "items_per_s": len(latencies) * items / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--target", default="127.0.0.1:50051", help="loopback address only")
    p.add_argument("--method", choices=("Decode", "Encode"), default="Decode")
    p.add_argument("--items", type=int, default=1, help="items per request")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--seconds", type=float, default=5.0, help="stop after this long")
    p.add_argument("--max-requests", type=int, default=200_000, help="stop after this many")
    args = p.parse_args(argv)
    if not args.target.startswith(("127.", "localhost:", "[::1]:")):
        p.error("--target must be a loopback address")
    result = asyncio.run(run_load(args.target, args.method, args.items, args.concurrency,
                                  args.seconds, args.max_requests))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
