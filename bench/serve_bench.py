"""Serving benchmark: vae-serve against a bare grpc.aio server, raw ONNX Runtime and KServe.

python -m bench.serve_bench --repo models --model vae --seconds 5 --out bench/out/serving.md

Serves the newest version of --model in --repo. Every server runs in its own process on
127.0.0.1, and so does the load generator (bench/load.py, closed loop, bounded in requests
and seconds). The peer is KServe's Python ModelServer (bench/kserve_peer.py) from the venv
that `bash bench/kserve_venv.sh` makes; without .venv-kserve its rows are left out.
24 load runs of --seconds each, then raw ONNX Runtime for 4 x --seconds, plus server
start-ups: about 3 minutes at --seconds 5 on 2 cores. Ratios measured within one run carry
over to other machines better than absolute numbers. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from bench.raw_runtime import items_per_s, session_run
from bench.report import command_line, publish
from service.help_format import DefaultsHelpFormatter
from service.plane.repository import read_manifest, resolve_version

CONCURRENCY = (1, 8, 64, 256)
BATCH_ITEMS = 64
RAW_BATCH_SIZES = (1, 8, 64, 256)
GRAPH_OF = {"Decode": "decoder", "Encode": "encoder"}


KSERVE_PYTHON = Path(".venv-kserve/bin/python")
KSERVE = "KServe ModelServer 0.21.0"
TRITON_PYTHON = Path(".venv-triton-server/bin/python")
BARE = "bare grpc.aio server"
OURS = "vae-serve"
OFF = "batching off (max_batch_size 1)"


@dataclass
class Row:
    setup: str
    method: str
    items: int
    concurrency: int
    protocol: str = "v1"
    result: dict[str, float] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, timeout_s: float = 60) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                  timeout=timeout_s, wait_for_ready=True)


def on_cores(argv: list[str], cores: str | None) -> list[str]:
    """argv under `taskset -c CORES` (the process and every child it starts), or as it is."""
    return ["taskset", "-c", cores, *argv] if cores else argv


class Server:
    """A server process on loopback, started and stopped around a group of load runs."""

    def __init__(self, argv: list[str], port: int, metrics_port: int | None, health: bool,
                 cores: str | None = None) -> None:
        self.port, self.metrics_port = port, metrics_port
        self.proc = subprocess.Popen(on_cores(argv, cores), stderr=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL)
        if health:
            _wait_ready(port)
        else:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=60)

    def batch_rows(self, graph: str) -> tuple[float, float]:
        """(sum, count) of vae_batch_rows for one graph."""
        if self.metrics_port is None:
            return 0.0, 0.0
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics").read()
        values = {s.name: s.value for f in text_string_to_metric_families(text.decode())
                  for s in f.samples if s.labels.get("graph") == graph}
        return values.get("vae_batch_rows_sum", 0.0), values.get("vae_batch_rows_count", 0.0)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def vae_server(repo: Path, model: str, *, cores: str | None = None, stand_in: str = "",
               **settings: int) -> Server:
    """vae-serve with these settings; with `stand_in`, one layer answered by zeros
    (bench/ladder_server.py)."""
    port, metrics_port = free_port(), free_port()
    env = {f"--{k.replace('_', '-')}": str(v) for k, v in settings.items()}
    entry = ["bench.ladder_server", "--stand-in", stand_in] if stand_in else ["service.cli"]
    argv = [sys.executable, "-m", *entry, "--model-repo", str(repo), "--model-name", model,
            "--port", str(port), "--metrics-port", str(metrics_port), "--log-level", "WARNING",
            *[x for pair in env.items() for x in pair]]
    return Server(argv, port, metrics_port, health=True, cores=cores)


def bare_server(image_shape: tuple[int, ...], latent_dim: int, items: int,
                cores: str | None = None) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "bench.bare_server", "--port", str(port), "--image-shape",
            *map(str, image_shape), "--latent-dim", str(latent_dim), "--items", str(items)]
    return Server(argv, port, None, health=False, cores=cores)


def kserve_server(folder: Path, model: str, cores: str | None = None, threads: int = 0) -> Server:
    port = free_port()
    argv = [str(KSERVE_PYTHON), "bench/kserve_peer.py", "--version-dir", str(folder), "--name",
            model, "--port", str(port), "--threads", str(threads)]
    return Server(argv, port, None, health=False, cores=cores)


def triton_server(folder: Path, model: str, instances: int = 1, threads: int = 1,
                  cores: str | None = None) -> Server:
    """Triton serving MODEL.decoder and MODEL.encoder of folder (bench/triton_peer.py)."""
    if not TRITON_PYTHON.exists():
        raise FileNotFoundError(f"{TRITON_PYTHON} is missing: bash bench/triton_venv.sh makes it")
    port = free_port()
    argv = [str(TRITON_PYTHON), "bench/triton_peer.py", "--version-dir", str(folder), "--name",
            model, "--port", str(port), "--instances", str(instances), "--threads", str(threads)]
    return Server(argv, port, None, health=False, cores=cores)


def run_load(port: int, method: str, items: int, concurrency: int, seconds: float,
             *flags: str, cores: str | None = None) -> dict[str, float]:
    """One run of bench/load.py (its own process, on `cores` if given) against 127.0.0.1:port.

    Returns its JSON line. `flags` go to bench.load as they are (--protocol, --model,
    --connections)."""
    out = subprocess.run(
        on_cores([sys.executable, "-m", "bench.load", "--target", f"127.0.0.1:{port}", "--method",
                  method, "--items", str(items), "--concurrency", str(concurrency), "--seconds",
                  str(seconds), *flags], cores), capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"bench.load {' '.join(flags)} failed: {out.stderr.strip()}")
    result: dict[str, float] = json.loads(out.stdout)
    return result


def load(server: Server, row: Row, seconds: float, model: str) -> None:
    graph = GRAPH_OF[row.method]
    before = server.batch_rows(graph)
    row.result = run_load(server.port, row.method, row.items, row.concurrency, seconds,
                          "--protocol", row.protocol, "--model", model)
    after = server.batch_rows(graph)
    if after[1] > before[1]:
        row.result["mean_batch_rows"] = (after[0] - before[0]) / (after[1] - before[1])


def raw_ort(folder: Path, image_shape: tuple[int, ...], latent_dim: int, seconds: float
            ) -> dict[str, dict[int, float]]:
    """Items/s of in-process ONNX Runtime (CPU, default threads) per graph and batch size."""
    import onnxruntime as ort

    results: dict[str, dict[int, float]] = {}
    for method, file, shape in (("Decode", "decoder.onnx", (latent_dim,)),
                                ("Encode", "encoder.onnx", image_shape)):
        session = ort.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
        results[method] = {}
        for n in RAW_BATCH_SIZES:
            batch = np.random.default_rng(0).random((n, *shape), dtype=np.float32)
            results[method][n] = items_per_s(session_run(session), batch,
                                             seconds / len(RAW_BATCH_SIZES))
    return results


def plan(with_kserve: bool) -> list[tuple[str, Row]]:
    """(server setup, load run) in the order they run; one server per setup."""
    rows = [("batching", Row(OURS, m, 1, c)) for m in GRAPH_OF for c in CONCURRENCY]
    rows += [("batching", Row(OURS, m, BATCH_ITEMS, 8)) for m in GRAPH_OF]
    rows += [("off", Row(OFF, m, 1, 64)) for m in GRAPH_OF]
    rows += [("bare1", Row(BARE, m, 1, c)) for m in GRAPH_OF for c in (1, 64)]
    rows += [("bare64", Row(BARE, m, BATCH_ITEMS, 8)) for m in GRAPH_OF]
    if with_kserve:
        rows += [("kserve", Row(KSERVE, m, n, c, protocol="v2")) for m in GRAPH_OF
                 for n, c in ((1, 1), (1, 64), (BATCH_ITEMS, 8))]
    return rows


def run(repo: Path, model: str, seconds: float) -> tuple[list[Row], dict[str, dict[int, float]]]:
    folder = resolve_version(repo, model, 0)
    manifest = read_manifest(folder)
    shape, latent = manifest.image_shape, manifest.latent_dim
    factories = {
        "batching": lambda: vae_server(repo, model),
        "off": lambda: vae_server(repo, model, max_batch_size=1),
        "bare1": lambda: bare_server(shape, latent, 1),
        "bare64": lambda: bare_server(shape, latent, BATCH_ITEMS),
        "kserve": lambda: kserve_server(folder, model),
    }
    rows: list[Row] = []
    current: tuple[str, Server] | None = None
    for setup, row in tqdm(plan(KSERVE_PYTHON.exists()), desc="load runs", unit="run"):
        if current is None or current[0] != setup:
            if current is not None:
                current[1].stop()
            current = (setup, factories[setup]())
        load(current[1], row, seconds, model)
        rows.append(row)
    if current is not None:
        current[1].stop()
    return rows, raw_ort(folder, shape, latent, seconds * 2)


def _result(rows: list[Row], method: str, setup: str, items: int, concurrency: int
            ) -> dict[str, float]:
    """The result of one load run, or {} when it did not run (no KServe venv)."""
    return next((r.result for r in rows if (r.setup, r.method, r.items, r.concurrency)
                 == (setup, method, items, concurrency)), {})


def targets(rows: list[Row], raw: dict[str, dict[int, float]]) -> list[str]:
    """One line per target of docs/benchmarks.md, met or missed, from this run's numbers."""
    lines = []
    for method in GRAPH_OF:
        at = functools.partial(_result, rows, method)
        ours1, bare1, ort1_ms = at(OURS, 1, 1), at(BARE, 1, 1), 1000 / raw[method][1]
        budget = bare1["p50_ms"] + ort1_ms + 0.2
        lines.append(f"- {method}, concurrency 1: p50 {ours1['p50_ms']:.2f} ms against bare "
                     f"{bare1['p50_ms']:.2f} + ONNX Runtime {ort1_ms:.3f} + 0.2 = {budget:.2f} ms: "
                     f"{'met' if ours1['p50_ms'] <= budget else 'missed'}")
        a = at(OURS, 1, 64)["requests_per_s"] / at(BARE, 1, 64)["requests_per_s"]
        lines.append(f"- {method}, 1 row at concurrency 64: {a:.0%} of the bare server's "
                     f"requests/s (goal >= 80 %): {'met' if a >= 0.8 else 'missed'}")
        ceiling = min(max(raw[method].values()), at(BARE, BATCH_ITEMS, 8)["items_per_s"])
        b = at(OURS, BATCH_ITEMS, 8)["items_per_s"] / ceiling
        lines.append(f"- {method}, {BATCH_ITEMS} rows at concurrency 8: {b:.0%} of the lower of "
                     f"raw ONNX Runtime's best and the bare server's items/s (goal >= 90 %): "
                     f"{'met' if b >= 0.9 else 'missed'}")
        for items, concurrency in ((1, 1), (1, 64), (BATCH_ITEMS, 8)):
            peer = at(KSERVE, items, concurrency)
            if not peer:
                continue
            x = at(OURS, items, concurrency)["requests_per_s"] / peer["requests_per_s"]
            lines.append(f"- {method}, {items} row(s) at concurrency {concurrency}: {x:.2f}x "
                         f"KServe's requests/s (goal >= 1.3x): {'met' if x >= 1.3 else 'missed'}")
    return lines


def report(rows: list[Row], raw: dict[str, dict[int, float]], command: str, model: str) -> str:
    lines = [f"Command: `{command}` (model `{model}`)", "",
             "| setup | protocol | method | items/req | concurrency | req/s | items/s | p50 ms | "
             "p99 ms | mean batch rows | errors |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        x = r.result
        batch = f"{x['mean_batch_rows']:.1f}" if "mean_batch_rows" in x else "-"
        lines.append(f"| {r.setup} | {r.protocol} | {r.method} | {r.items} | {r.concurrency} | "
                     f"{x['requests_per_s']:.0f} | {x['items_per_s']:.0f} | {x['p50_ms']:.2f} | "
                     f"{x['p99_ms']:.2f} | {batch} | {x['errors']:.0f} |")
    lines += ["", "Raw in-process ONNX Runtime (CPU), items/s by batch size:", "",
              "| graph | " + " | ".join(f"batch {n}" for n in RAW_BATCH_SIZES) + " |",
              "|---|" + "---|" * len(RAW_BATCH_SIZES)]
    for method, by_size in raw.items():
        lines.append(f"| {GRAPH_OF[method]} | " + " | ".join(f"{v:.0f}" for v in by_size.values())
                     + " |")
    lines += ["", "Targets, from this one run:", "", *targets(rows, raw)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_bench", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--model", default="vae")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each load run")
    p.add_argument("--out", type=Path, default=Path("bench/out/serving.md"))
    args = p.parse_args(argv)
    rows, raw = run(args.repo, args.model, args.seconds)
    command = command_line("bench.serve_bench", argv)
    text = report(rows, raw, command.strip(), args.model)
    publish(args.out, text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
