"""Pinned-core serving peers: each server on core 0, the load generator on core 1.

python -m bench.pinned_bench --repo models --model mnist --rounds 2 --seconds 4

Every server runs under `taskset -c 0` (its whole process tree: Triton's Python-backend stub
and KServe's workers are children that inherit the mask) and bench/load.py under
`taskset -c 1`, over one connection, so each server gets one core whatever the machine has.
vae-serve and the KServe peer get one ONNX Runtime intra-op thread (Triton's peer has one
already): ORT's default pool pins a thread to every physical core, out of taskset's mask, and
a run stops if any thread of a server's tree may run off core 0.
Servers: vae-serve (vae.v1), KServe ModelServer and Triton's Python backend (KServe v2, from
the venvs that bench/kserve_venv.sh and bench/triton_venv.sh make) and the bare grpc.aio
server (the ceiling of grpc.aio and protobuf alone). Points: 1-row Decode at concurrency 1, 8
and 64, 64-row Decode at 8. Per point: requests/s, p50 and the server's CPU time per answered
request, read from /proc for the whole process tree. Each round starts every server afresh;
the order of the servers alternates between rounds and the tables give the median over
rounds. Then raw ONNX Runtime runs decoder.onnx on core 0 (one thread) at batch 1 and 64.
About rounds x (16 x (--seconds + 2 s) + 40 s of start-ups), plus 2 x --seconds. Linux only.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.raw_runtime import items_per_s, session_run
from bench.report import command_line, publish
from bench.serve_bench import (
    BARE,
    KSERVE,
    KSERVE_PYTHON,
    OURS,
    TRITON_PYTHON,
    Server,
    bare_server,
    kserve_server,
    run_load,
    triton_server,
    vae_server,
)
from service.help_format import DefaultsHelpFormatter
from service.plane.repository import read_manifest, resolve_version

SERVER_CORE, LOAD_CORE = 0, 1
TRITON = "Triton Python backend 2.51.0"
LADDER = {"plane": "vae-serve, data plane answered by zeros",
          "compute": "vae-serve, ONNX Runtime answered by zeros"}
"""The rungs of --ladder: bench/ladder_server.py's stand-ins, and their rows' labels."""


@dataclass(frozen=True)
class Point:
    items: int
    concurrency: int

    @property
    def label(self) -> str:
        return f"{'' if self.items == 1 else f'{self.items}-row '}c={self.concurrency}"


POINTS = (Point(1, 1), Point(1, 8), Point(1, 64), Point(64, 8))
RAW_BATCHES = (1, 64)


@dataclass(frozen=True)
class Peer:
    """A server under test: how to start it for a request size, and how bench.load reaches it."""

    label: str
    start: Callable[[int], Server]
    """Starts the server for requests of this many rows (only the bare server's answer depends
    on it; the others are started once per round)."""
    load_flags: tuple[str, ...]
    per_items: bool = False


Results = dict[tuple[str, Point], list[dict[str, float]]]
"""(server, point) -> one load result per round, with "cpu_us" (server CPU per answer) added."""


def process_tree(root: int) -> dict[int, int]:
    """Process `root` and all its descendants, from /proc: pid -> CPU clock ticks so far.

    Each process counts its live threads and its reaped children (cutime, cstime), so a
    child that exits between two readings moves into its parent's total, not out of it."""
    children: dict[int, list[int]] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # it exited while we looked
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: ppid
        times[pid] = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        tree[pid] = times.get(pid, 0)
        todo += children.get(pid, [])
    return tree


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of process `root` and all its descendants."""
    return sum(process_tree(root).values()) / os.sysconf("SC_CLK_TCK")


def tree_cores(root: int) -> set[int]:
    """The cores any thread of the tree may run on: taskset's mask, unless a thread reset it
    (ONNX Runtime pins the threads of its default-sized pool, one per physical core)."""
    cores: set[int] = set()
    for pid in process_tree(root):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                cores |= os.sched_getaffinity(int(tid))
        except OSError:  # it exited while we looked
            continue
    return cores


def measure(server: Server, peer: Peer, point: Point, seconds: float) -> dict[str, float]:
    """One load run from core 1; the result gains the server tree's CPU µs per answer and,
    for vae-serve, the mean rows of its decoder's batches (vae_batch_rows)."""
    before, rows_before = tree_cpu_s(server.proc.pid), server.batch_rows("decoder")
    result = run_load(server.port, "Decode", point.items, point.concurrency, seconds,
                      "--connections", "1", *peer.load_flags, cores=str(LOAD_CORE))
    spent = tree_cpu_s(server.proc.pid) - before
    rows, batches = (after - earlier for after, earlier
                     in zip(server.batch_rows("decoder"), rows_before, strict=True))
    if batches:
        result["batch_rows"] = rows / batches
    if (cores := tree_cores(server.proc.pid)) != {SERVER_CORE}:
        raise RuntimeError(f"{peer.label}: threads of its process tree may run on cores "
                           f"{sorted(cores)}, not only {SERVER_CORE}: give it an explicit "
                           "ONNX Runtime thread count")
    result["cpu_us"] = spent * 1e6 / max(result["requests"], 1)
    return result


def run_round(peers: list[Peer], seconds: float, results: Results) -> None:
    """Every point against every peer, each peer started afresh on core 0."""
    for peer in peers:
        server: Server | None = None
        items = 0
        for point in POINTS:
            if server is None or (peer.per_items and point.items != items):
                if server is not None:
                    server.stop()
                server, items = peer.start(point.items), point.items
                measure(server, peer, Point(point.items, 1), 0.5)  # warm-up, not recorded
            results.setdefault((peer.label, point), []).append(
                measure(server, peer, point, seconds))
            print(f"{peer.label} {point.label}: {results[(peer.label, point)][-1]}",
                  file=sys.stderr)
        if server is not None:
            server.stop()


def raw_ort_us(graph: Path, latent_dim: int, seconds: float) -> dict[int, float]:
    """µs per decoder run at each batch size, one ONNX Runtime thread, this thread on core 0."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {SERVER_CORE})
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        return {n: 1e6 * n / items_per_s(session_run(session),
                                         rng.standard_normal((n, latent_dim), np.float32),
                                         seconds)
                for n in RAW_BATCHES}
    finally:
        os.sched_setaffinity(0, cores)


def median(results: Results, label: str, point: Point, key: str) -> float:
    return statistics.median(r[key] for r in results[(label, point)])


def report(peers: list[Peer], results: Results, raw: dict[int, float], command: str,
           rounds: int) -> str:
    rule = "|---|" + "---|" * len(POINTS)
    lines = [f"Command: `{command}`", "",
             f"Server on core {SERVER_CORE} (`taskset -c {SERVER_CORE}`, its whole process tree), "
             f"bench/load.py on core {LOAD_CORE}, one connection, Decode; median of {rounds} "
             "round(s). CPU: the server tree's user + system time per answered request.", "",
             f"| server | {' | '.join(f'{p.label} req/s' for p in POINTS)} | "
             "CPU µs/request at c=8 / c=64 |", rule + "---|"]
    for peer in peers:
        rates = " | ".join(f"{median(results, peer.label, p, 'requests_per_s'):,.0f}"
                           for p in POINTS)
        cpu = " / ".join(f"{median(results, peer.label, p, 'cpu_us'):,.0f}" for p in POINTS[1:3])
        lines.append(f"| {peer.label} | {rates} | {cpu} |")
    lines += ["", f"| server | {' | '.join(f'{p.label} p50 ms' for p in POINTS)} | "
              f"CPU µs/request at {POINTS[3].label} | errors |", rule + "---|---|"]
    for peer in peers:
        p50s = " | ".join(f"{median(results, peer.label, p, 'p50_ms'):.2f}" for p in POINTS)
        errors = sum(r["errors"] for p in POINTS for r in results[(peer.label, p)])
        lines.append(f"| {peer.label} | {p50s} | "
                     f"{median(results, peer.label, POINTS[3], 'cpu_us'):,.0f} | {errors:.0f} |")
    batching = [peer for peer in peers if "batch_rows" in results[(peer.label, POINTS[0])][0]]
    if batching:
        lines += ["", f"| server | {' | '.join(f'{p.label} rows per batch' for p in POINTS)} |",
                  rule]
        lines += [f"| {peer.label} | "
                  + " | ".join(f"{median(results, peer.label, p, 'batch_rows'):.1f}"
                               for p in POINTS) + " |" for peer in batching]
    lines += ["", f"Requests/s of each round, in the order run: {per_round(peers, results)}", "",
              f"Raw ONNX Runtime, decoder.onnx on core {SERVER_CORE}, one thread: "
              + ", ".join(f"batch {n}: {us:,.1f} µs per run" for n, us in raw.items())]
    return "\n".join(lines) + "\n"


def per_round(peers: list[Peer], results: Results) -> str:
    """`server point: a, b` for each server and point: how far rounds spread."""
    return "; ".join(f"{peer.label} {p.label}: "
                     + ", ".join(f"{r['requests_per_s']:,.0f}" for r in results[(peer.label, p)])
                     for peer in peers for p in POINTS)


def positive(kind: Callable[[str], float | int]) -> Callable[[str], float | int]:
    """An argparse type: the number `kind` reads, refused unless above 0."""
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be above 0")
        return value
    return parse


def require_pinning(p: argparse.ArgumentParser, cores: set[int]) -> None:
    """A usage error unless runs can be pinned here: taskset on PATH, `cores` all allowed."""
    if shutil.which("taskset") is None:
        p.error("taskset is not on PATH: install util-linux")
    if not cores <= (allowed := os.sched_getaffinity(0)):
        p.error(f"needs cores {sorted(cores)} in this process's affinity, has {sorted(allowed)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pinned_bench", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    p.add_argument("--model", default="vae", help="model name; its newest version is used")
    p.add_argument("--rounds", type=positive(int), default=2,
                   help="rounds, each starting every server afresh, order alternating")
    p.add_argument("--seconds", type=positive(float), default=4.0, help="length of each load run")
    p.add_argument("--out", type=Path, default=Path("bench/out/pinned.md"))
    p.add_argument("--ladder", action="store_true",
                   help="also vae-serve with its data plane, then ONNX Runtime, answered by "
                   "zeros (bench/ladder_server.py): what each layer costs per request")
    args = p.parse_args(argv)
    require_pinning(p, {SERVER_CORE, LOAD_CORE})
    for python, script in ((KSERVE_PYTHON, "kserve_venv.sh"), (TRITON_PYTHON, "triton_venv.sh")):
        if not python.exists():
            p.error(f"{python} is missing: bash bench/{script} makes it")
    try:
        folder = resolve_version(args.repo, args.model, 0)
        manifest = read_manifest(folder)
    except (OSError, ValueError) as err:
        p.error(f"--repo {args.repo} --model {args.model}: {err}")
    shape, latent, core = tuple(manifest.image_shape), manifest.latent_dim, str(SERVER_CORE)
    v2 = ("--protocol", "v2", "--model", args.model)
    peers = [
        Peer(OURS, lambda _: vae_server(args.repo, args.model, cores=core, intra_op_threads=1),
             ()),
        *(Peer(label, functools.partial(lambda rung, _: vae_server(
            args.repo, args.model, cores=core, stand_in=rung, intra_op_threads=1), rung), ())
          for rung, label in LADDER.items() if args.ladder),
        Peer(KSERVE, lambda _: kserve_server(folder, args.model, cores=core, threads=1), v2),
        Peer(TRITON, lambda _: triton_server(folder, args.model, cores=core), v2),
        Peer(BARE, lambda items: bare_server(shape, latent, items, cores=core), (), True),
    ]
    results: Results = {}
    for index in range(args.rounds):
        run_round(peers if index % 2 == 0 else peers[::-1], args.seconds, results)
    raw = raw_ort_us(folder / "decoder.onnx", latent, args.seconds)
    text = report(peers, results, raw, command_line("bench.pinned_bench", argv), args.rounds)
    publish(args.out, text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
