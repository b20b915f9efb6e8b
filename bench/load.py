"""Closed-loop gRPC load generator, run in its own process: bounded in requests and seconds.

python -m bench.load --target 127.0.0.1:50051 --method Decode --items 1 --concurrency 64
prints one JSON line: requests, errors, seconds, requests_per_s, items_per_s, p50_ms, p99_ms,
cpu_s (this process's CPU time during the load, its own cost per request when divided).
Needs a server already listening at --target (loopback only); runs --seconds (default 5).
--protocol v2 sends the same rows as KServe v2 ModelInfer to MODEL.decoder or MODEL.encoder
(raw_input_contents, as tritonclient does), so both fronts are measured by one loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from service.fronts.tensors import to_tensor
from service.help_format import DefaultsHelpFormatter
from service.inference import grpc_service_pb2 as v2_pb2
from service.inference import grpc_service_pb2_grpc as v2_pb2_grpc
from service.vae.v1 import vae_pb2, vae_pb2_grpc

CONNECTIONS = 8
"""Client connections; requests are spread over them round-robin. With --workers the kernel
spreads connections, not calls, over the workers, so one connection reaches one worker."""
GRAPH_OF = {"Decode": "decoder", "Encode": "encoder"}
"""vae.v1 method -> the KServe v2 model suffix that runs the same graph."""
Call = Callable[..., Awaitable[Any]]


def _rows(method: str, items: int, image_shape: tuple[int, ...], latent_dim: int) -> np.ndarray:
    """The same rows for both protocols: latents for Decode, images in [0, 1) for Encode."""
    rng = np.random.default_rng(0)
    if method == "Decode":
        return rng.standard_normal((items, latent_dim)).astype(np.float32)
    return rng.random((items, *image_shape), dtype=np.float32)


def build_request(method: str, items: int, image_shape: tuple[int, ...], latent_dim: int
                  ) -> object:
    rows = _rows(method, items, image_shape, latent_dim)
    if method == "Decode":
        return vae_pb2.DecodeRequest(latents=to_tensor(rows))
    return vae_pb2.EncodeRequest(images=to_tensor(rows))


def build_v2_request(model: str, method: str, items: int, image_shape: tuple[int, ...],
                     latent_dim: int) -> v2_pb2.ModelInferRequest:
    """ModelInfer for MODEL.decoder (z) or MODEL.encoder (x), data in raw_input_contents."""
    rows = _rows(method, items, image_shape, latent_dim)
    name = "z" if method == "Decode" else "x"
    tensor = v2_pb2.ModelInferRequest.InferInputTensor(name=name, datatype="FP32",
                                                        shape=rows.shape)
    return v2_pb2.ModelInferRequest(model_name=f"{model}.{GRAPH_OF[method]}", inputs=[tensor],
                                    raw_input_contents=[rows.tobytes()])


async def _prepare(channels: list[grpc.aio.Channel], protocol: str, method: str, items: int,
                   model: str | None) -> tuple[list[Call], object]:
    """One call per channel and the request they all send; every channel is connected first,
    so connection set-up is not timed. v2 takes the input shape from ModelMetadata, so any
    KServe v2 server (a peer's too) can be driven."""
    if protocol == "v1":
        v1 = [vae_pb2_grpc.VaeServiceStub(c) for c in channels]
        infos = await asyncio.gather(*(s.GetModelInfo(vae_pb2.GetModelInfoRequest()) for s in v1))
        shape, latent = tuple(infos[0].image_shape), infos[0].latent_dim
        return [getattr(s, method) for s in v1], build_request(method, items, shape, latent)
    v2 = [v2_pb2_grpc.GRPCInferenceServiceStub(c) for c in channels]
    if model is None:
        model = (await vae_pb2_grpc.VaeServiceStub(channels[0]).GetModelInfo(
            vae_pb2.GetModelInfoRequest())).name
    name = f"{model}.{GRAPH_OF[method]}"
    metadata = await v2[0].ModelMetadata(v2_pb2.ModelMetadataRequest(name=name))
    dims = tuple(int(d) for d in metadata.inputs[0].shape[1:])
    await asyncio.gather(*(s.ModelReady(v2_pb2.ModelReadyRequest(name=name)) for s in v2))
    shape, latent = (dims, 0) if method == "Encode" else ((), dims[0])
    return [s.ModelInfer for s in v2], build_v2_request(model, method, items, shape, latent)


async def run_load(target: str, method: str, items: int, concurrency: int, seconds: float,
                   max_requests: int, protocol: str = "v1", model: str | None = None,
                   connections: int = CONNECTIONS) -> dict[str, float]:
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    calls, request = await _prepare(channels, protocol, method, items, model)
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.monotonic() + seconds

    async def worker(index: int) -> None:
        nonlocal errors, sent
        call = calls[index % len(calls)]
        while time.monotonic() < stop_at and sent < max_requests:
            sent += 1
            started = time.perf_counter()
            try:
                await call(request, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started, cpu_started = time.monotonic(), time.process_time()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed, cpu_s = time.monotonic() - started, time.process_time() - cpu_started
    for channel in channels:
        await channel.close()
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {"requests": len(latencies), "errors": errors, "seconds": elapsed,
            "requests_per_s": len(latencies) / elapsed, "items_per_s": len(latencies) * items / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "cpu_s": cpu_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--target", default="127.0.0.1:50051", help="loopback address only")
    p.add_argument("--protocol", choices=("v1", "v2"), default="v1",
                   help="vae.v1.VaeService, or KServe v2 ModelInfer")
    p.add_argument("--method", choices=tuple(GRAPH_OF), default="Decode",
                   help="with --protocol v2: model MODEL.decoder or MODEL.encoder")
    p.add_argument("--model", default=None,
                   help="v2 model name prefix (default: the name vae.v1 GetModelInfo gives)")
    p.add_argument("--items", type=int, default=1, help="items per request")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--connections", type=int, default=CONNECTIONS, help="client connections")
    p.add_argument("--seconds", type=float, default=5.0, help="stop after this long")
    p.add_argument("--max-requests", type=int, default=200_000, help="stop after this many")
    args = p.parse_args(argv)
    if not args.target.startswith(("127.", "localhost:", "[::1]:")):
        p.error("--target must be a loopback address")
    try:
        result = asyncio.run(run_load(args.target, args.method, args.items, args.concurrency,
                                      args.seconds, args.max_requests, args.protocol, args.model,
                                      args.connections))
    except grpc.aio.AioRpcError as err:  # before the load: no server, or no such model
        p.exit(1, f"{p.prog}: {args.target}: {err.code().name}: {err.details()}\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
