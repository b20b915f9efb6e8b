"""What Score costs: against Encode+Decode of the same rows, and against doing it in client code.

python -m bench.score_bench --repo models --model vae --seconds 5

Starts one `vae-serve` on 127.0.0.1 (a free port) and measures, each for --seconds in a
closed loop from this process, alternating the two ways of each pair --rounds times:

1. k = 1, --images images per call at concurrency 8: `Score(samples=1)` against what it
   replaces, `Encode` then `Decode` of the posterior draws (the same encoder and decoder rows;
   Score's scorer rows also compute log p(x|z)). Server CPU per image, the steadier measure on a
   shared machine, and images/s; goal: Score at most 1.3x.
2. k = --samples for 64 images, one call at a time: `Score(samples=k)` against what a user of any
   server does today: Encode, draw k codes per image, Decode them in calls of at most 1024
   rows, and compute the importance-weighted bound in numpy (with log-probabilities clipped, as
   one must once sigmoid outputs saturate). Images/s of each.

Prints a markdown table (written to --out too).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np

from bench.fronts_bench import process_cpu_s
from bench.report import command_line, publish
from bench.serve_bench import vae_server
from service.fronts.tensors import to_array, to_tensor
from service.help_format import DefaultsHelpFormatter
from service.operations.draws import posterior_noise
from service.operations.likelihood import posterior_latents
from service.vae.v1 import vae_pb2, vae_pb2_grpc

GOAL_K1 = 1.3
"""Score(samples=1) server CPU per image over Encode+Decode's."""
CLIENT_DECODE_ROWS = 1024
"""Rows per Decode call of the client-side way: a request of more exceeds the server's queue."""
EPS = 1e-7
"""Probabilities clipped to [EPS, 1 - EPS] before log, as client code must."""

Call = Callable[[vae_pb2_grpc.VaeServiceStub], Awaitable[int]]


def _images(count: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).random((count, *shape), dtype=np.float32)


def score_call(images: np.ndarray, samples: int) -> Call:
    request = vae_pb2.ScoreRequest(images=to_tensor(images), samples=samples, seed=1)

    async def call(stub: vae_pb2_grpc.VaeServiceStub) -> int:
        await stub.Score(request)
        return len(images)
    return call


def encode_decode_call(images: np.ndarray) -> Call:
    request = vae_pb2.EncodeRequest(images=to_tensor(images))

    async def call(stub: vae_pb2_grpc.VaeServiceStub) -> int:
        encoded = await stub.Encode(request)
        mean, log_var = to_array(encoded.mean), to_array(encoded.log_var)
        z = posterior_latents(mean, log_var, posterior_noise(len(mean), 1, mean.shape[1], 1))
        await stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(z[:, 0])))
        return len(images)
    return call


def client_iwae_call(images: np.ndarray, samples: int) -> Call:
    """The importance-weighted bound computed in client code over vae.v1 round trips."""
    request = vae_pb2.EncodeRequest(images=to_tensor(images))
    flat_x = images.reshape(len(images), 1, -1)

    async def call(stub: vae_pb2_grpc.VaeServiceStub) -> int:
        encoded = await stub.Encode(request)
        mean, log_var = to_array(encoded.mean), to_array(encoded.log_var)
        eps = posterior_noise(len(mean), samples, mean.shape[1], 1)
        z = posterior_latents(mean, log_var, eps).reshape(-1, mean.shape[1])
        parts = [to_array((await stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(
            z[start:start + CLIENT_DECODE_ROWS])))).images)
            for start in range(0, len(z), CLIENT_DECODE_ROWS)]
        p = np.clip(np.concatenate(parts), EPS, 1 - EPS).reshape(len(images), samples, -1)
        log_px_z = (flat_x * np.log(p) + (1 - flat_x) * np.log1p(-p)).sum(-1)
        log_pz = -0.5 * (np.square(z).sum(-1).reshape(len(images), samples))
        log_qz = -0.5 * (np.square(eps).sum(-1) + log_var.sum(-1)[:, None])
        log_w = log_px_z + log_pz - log_qz
        top = log_w.max(axis=1, keepdims=True)
        _ = -(top[:, 0] + np.log(np.exp(log_w - top).mean(axis=1)))
        return len(images)
    return call


async def closed_loop(port: int, call: Call, concurrency: int, seconds: float
                      ) -> tuple[int, float]:
    """(images answered, seconds) with `concurrency` callers on one channel."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_receive_message_length", 1 << 28)]) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        await call(stub)  # warm: the sizes of this call are measured once
        stop = time.monotonic() + seconds
        started = time.monotonic()

        async def caller() -> int:
            done = 0
            while time.monotonic() < stop:
                done += await call(stub)
            return done
        images = sum(await asyncio.gather(*(caller() for _ in range(concurrency))))
        return images, time.monotonic() - started


def measure(pid: int, port: int, call: Call, concurrency: int, seconds: float
            ) -> tuple[float, float]:
    """(images/s, server CPU µs per image)."""
    before = process_cpu_s(pid)
    images, elapsed = asyncio.run(closed_loop(port, call, concurrency, seconds))
    return images / elapsed, 1e6 * (process_cpu_s(pid) - before) / images


def run(repo: Path, model: str, seconds: float, rounds: int, images: int, samples: int
        ) -> list[str]:
    server = vae_server(repo, model)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            info = vae_pb2_grpc.VaeServiceStub(channel).GetModelInfo(vae_pb2.GetModelInfoRequest())
        shape = tuple(info.image_shape)
        pairs = {
            f"k = 1, {images} images per call, concurrency 8": (
                ("Score(samples=1)", score_call(_images(images, shape), 1), 8),
                ("Encode + Decode", encode_decode_call(_images(images, shape)), 8)),
            f"k = {samples}, 64 images per call, concurrency 1": (
                (f"Score(samples={samples})", score_call(_images(64, shape), samples), 1),
                ("client code over vae.v1", client_iwae_call(_images(64, shape), samples), 1)),
        }
        lines = ["| point | way | images/s | server CPU µs per image |", "|---|---|---:|---:|"]
        for point, ways in pairs.items():
            totals: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in ways}
            for r in range(rounds):
                for name, call, concurrency in ways if r % 2 == 0 else ways[::-1]:
                    totals[name].append(measure(server.proc.pid, server.port, call, concurrency,
                                                seconds))
            means = {name: (float(np.mean([t[0] for t in v])), float(np.mean([t[1] for t in v])))
                     for name, v in totals.items()}
            for name, (rate, cpu) in means.items():
                lines.append(f"| {point} | {name} | {rate:,.0f} | {cpu:,.0f} |")
            (first, (r1, c1)), (second, (r2, c2)) = means.items()
            lines.append(f"| {point} | ratio {first} / {second} | {r1 / r2:.2f}x | "
                         f"{c1 / c2:.2f}x |")
        return lines
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.score_bench", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--model", default="vae")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    p.add_argument("--rounds", type=int, default=2, help="alternations of each pair")
    p.add_argument("--images", type=int, default=16, help="images per call at k = 1")
    p.add_argument("--samples", type=int, default=100, help="k of the second point")
    p.add_argument("--out", type=Path, default=Path("bench/out/score.md"))
    args = p.parse_args(argv)
    lines = run(args.repo, args.model, args.seconds, args.rounds, args.images, args.samples)
    command = command_line("bench.score_bench", argv)
    text = "\n".join([f"`{command.strip()}`", "", *lines]) + "\n"
    publish(args.out, text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
