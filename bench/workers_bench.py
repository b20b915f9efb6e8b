"""--workers 2 with a core per worker against --workers 1 on one core, in one run.

python -m bench.workers_bench --repo models --model mnist --seconds 5 --rounds 2 --ghz PATH

1-row Decode at concurrency 64 over 8 connections (the kernel spreads connections, not calls,
over the workers), both servers with one ONNX Runtime intra-op thread per worker:
(a) `--workers 1` with its whole process tree under `taskset -c 0`, the load generator under
`taskset -c 1`; (b) `--workers 2` started under `taskset -c 0,1`; once both workers listen,
worker i and every thread of it is moved to core i alone (the supervisor, which serves
nothing, stays on 0,1). A run stops if any worker thread may run off its core, checked after
pinning and after every load run. On 2 cores (b)'s load generator has no core of its own: it
runs unpinned, sharing the workers' cores (on a machine with more it gets the cores above 1).
Each setup is driven by two load generators in turn, each its own process: bench/load.py
(Python) and the ghz binary (Go) v0.121.0, --ghz or ghz on PATH; without ghz its rows are
left out (get it from https://github.com/bojand/ghz/releases).
Per run: requests/s, p50, errors, the server tree's CPU per request (from /proc), requests
per server-core-second, the cores the server and the load generator kept busy, the load
generator's CPU per request, and for (b) each worker's connections and share of the
server's CPU. The report ends with a 16-core node's requests/s extrapolated from (b),
marked as such. Each round starts both servers afresh, order alternating; the tables give
the median over rounds. About rounds x (4 x --seconds + 15 s). Linux only.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from google.protobuf import proto
from google.protobuf.message import Message

from bench.load import build_request
from bench.pinned_bench import positive, process_tree, require_pinning, tree_cores
from bench.report import command_line, publish
from bench.serve_bench import Server, on_cores, run_load, vae_server
from service.help_format import DefaultsHelpFormatter
from service.plane.repository import read_manifest, resolve_version

CONCURRENCY, CONNECTIONS = 64, 8
CORES = (0, 1)
"""Worker i runs on CORES[i]; (a)'s one worker on core 0, its load generator on core 1."""
NODE_CORES = 16
LISTEN, ESTABLISHED = "0A", "01"
"""TCP states as /proc/net/tcp writes them."""


@dataclass(frozen=True)
class Setup:
    label: str
    workers: int
    server_cores: str
    """taskset's core list for the server's start."""
    load_cores: str | None
    """taskset's core list for the load generator; None: unpinned."""


@dataclass(frozen=True)
class Load:
    label: str
    run: Callable[[int, float, str | None], dict[str, float]]
    """(port, seconds, cores) -> requests, errors, seconds, p50_ms, cpu_s (its own CPU)."""


@dataclass
class Measured:
    """One load run against one setup."""

    requests_per_s: float
    p50_ms: float
    errors: float
    cpu_us: float
    """The server tree's CPU µs per answered request."""
    per_core_s: float
    """Requests per server-core-second: the capacity of one core."""
    server_cores: float
    load_cores: float
    """CPU seconds per second of load: the cores the server, and the load generator, kept busy."""
    load_us: float
    """The load generator's CPU µs per answered request."""
    share: dict[str, float]
    """Process of the server tree -> its part of the tree's CPU."""
    connections: dict[str, int]
    """Worker -> its client connections, when the most were open."""


Results = dict[tuple[str, str], list[Measured]]


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of a process's sockets: how /proc/net/tcp's rows are told apart by owner."""
    inodes = set()
    with suppress(OSError):  # it exited while we looked
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
    return inodes


def sockets_on(port: int, state: str, pids: list[int]) -> dict[int, int]:
    """How many TCP sockets with local port `port` in `state` each process holds: a
    worker's listening socket, or its ends of client connections."""
    wanted = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(FileNotFoundError), open(table) as lines:  # no tcp6 without IPv6
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                    wanted.add(fields[9])
    return {pid: len(_socket_inodes(pid) & wanted) for pid in pids}


def listening_workers(server: Server, workers: int, timeout_s: float = 60) -> list[int]:
    """The serving processes, in fork order: the server itself with one worker, else its
    children (the supervisor serves nothing), once every one listens on the port. Health
    answers as soon as one does; a load started then would give all connections to it."""
    if workers == 1:
        return [server.proc.pid]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children = sorted(pid for pid in process_tree(server.proc.pid) if pid != server.proc.pid)
        if len(children) == workers and all(sockets_on(server.port, LISTEN, children).values()):
            return children
        time.sleep(0.2)
    raise RuntimeError(f"{workers} workers did not all listen on port {server.port} "
                       f"within {timeout_s:.0f} s")


def pin(pid: int, core: int) -> None:
    """Every thread of `pid` onto `core` alone. Threads started later inherit their creator's
    mask, so passes repeat until none finds a thread to move (one may start mid-pass)."""
    for _ in range(10):
        moved = 0
        for tid in map(int, os.listdir(f"/proc/{pid}/task")):
            with suppress(ProcessLookupError):  # the thread ended
                if os.sched_getaffinity(tid) != {core}:
                    os.sched_setaffinity(tid, {core})
                    moved += 1
        if not moved:
            return
    raise RuntimeError(f"worker {pid}: threads kept appearing off core {core}")


def check_pinned(pins: dict[int, int]) -> None:
    """Refuse the run unless every thread of each worker may run on its own core only."""
    for pid, core in pins.items():
        if (cores := tree_cores(pid)) != {core}:
            raise RuntimeError(f"worker {pid} has threads that may run on cores {sorted(cores)}, "
                               f"not only {core} (or it is gone): the pinning did not hold")


@contextmanager
def peak_connections(port: int, pids: list[int]) -> Iterator[dict[int, int]]:
    """Samples each worker's client connections while the block runs; the dict yielded ends
    up holding the sample with the most connections in all."""
    peak: dict[int, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            now = sockets_on(port, ESTABLISHED, pids)
            if sum(now.values()) > sum(peak.values()):
                peak.update(now)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


def python_load(port: int, seconds: float, cores: str | None) -> dict[str, float]:
    """bench/load.py; its cpu_s counts its load loop, not its imports."""
    return run_load(port, "Decode", 1, CONCURRENCY, seconds, "--connections", str(CONNECTIONS),
                    cores=cores)


def ghz_load(ghz: str, payload: Path, port: int, seconds: float, cores: str | None
             ) -> dict[str, float]:
    """The same load from ghz. Calls still in flight at the end are not counted (not as errors
    either). Its CPU comes from rusage: it is the only child reaped during the run."""
    argv = [ghz, "--insecure", "--call", "vae.v1.VaeService.Decode", "--binary-file", str(payload),
            "-z", f"{seconds:g}s", "--duration-stop", "ignore", "--connections", str(CONNECTIONS),
            "--concurrency", str(CONCURRENCY), "--format", "json", f"127.0.0.1:{port}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(on_cores(argv, cores), capture_output=True, text=True,
                         timeout=seconds + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"ghz failed: {(out.stderr or out.stdout).strip()}")
    report = json.loads(out.stdout)
    codes = report["statusCodeDistribution"] or {}
    ok = codes.get("OK", 0)
    p50_ns = next((d["latency"] for d in report["latencyDistribution"] or []
                   if d["percentage"] == 50), float("nan"))
    return {"requests": ok, "errors": sum(codes.values()) - ok, "seconds": report["total"] / 1e9,
            "p50_ms": p50_ns / 1e6, "cpu_s": after.ru_utime - before.ru_utime
            + after.ru_stime - before.ru_stime}


def measure(server: Server, pins: dict[int, int], load: Load, cores: str | None,
            seconds: float) -> Measured:
    """One load run; the server tree's CPU per process from /proc around it."""
    workers = {pid: f"worker {i} (core {core})" for i, (pid, core) in enumerate(pins.items())}
    before = process_tree(server.proc.pid)
    with peak_connections(server.port, list(pins)) as peak:
        result = load.run(server.port, seconds, cores)
    after = process_tree(server.proc.pid)
    check_pinned(pins)
    ticks = max(sum(after.values()) - sum(before.values()), 1)
    cpu_s = ticks / os.sysconf("SC_CLK_TCK")
    requests, elapsed = max(result["requests"], 1), result["seconds"]
    return Measured(
        requests_per_s=result["requests"] / elapsed, p50_ms=result["p50_ms"],
        errors=result["errors"], cpu_us=cpu_s * 1e6 / requests, per_core_s=requests / cpu_s,
        server_cores=cpu_s / elapsed, load_cores=result["cpu_s"] / elapsed,
        load_us=result["cpu_s"] * 1e6 / requests,
        share={workers.get(pid, "supervisor"): (after[pid] - before.get(pid, 0)) / ticks
               for pid in sorted(after, key=lambda p: workers.get(p, ""))},
        connections={workers[pid]: n for pid, n in peak.items()})


def run_setup(setup: Setup, loads: list[Load], repo: Path, model: str, seconds: float,
              results: Results) -> None:
    """Start the setup's server, pin its workers, warm it up and drive it with every load."""
    server = vae_server(repo, model, cores=setup.server_cores, workers=setup.workers,
                        intra_op_threads=1)
    try:
        pins = dict(zip(listening_workers(server, setup.workers), CORES, strict=False))
        for pid, core in pins.items():
            pin(pid, core)
        check_pinned(pins)
        python_load(server.port, 0.5, setup.load_cores)  # warm-up, not recorded
        for load in loads:
            run = measure(server, pins, load, setup.load_cores, seconds)
            results.setdefault((setup.label, load.label), []).append(run)
            print(f"{setup.label}, {load.label}: {run.requests_per_s:,.0f} requests/s, "
                  f"{run.cpu_us:,.0f} server CPU µs per request", file=sys.stderr)
    finally:
        server.stop()


def median(runs: list[Measured], key: str) -> float:
    """The median over rounds: one slow round on a shared machine does not move it."""
    return float(statistics.median(getattr(r, key) for r in runs))


def report(setups: list[Setup], loads: list[Load], results: Results, command: str, model: str,
           rounds: int, seconds: float, ghz_note: str) -> str:
    one, two = setups
    load_place = (f"on cores {two.load_cores}" if two.load_cores else
                  "unpinned: no core besides 0 and 1 is free here, so it shares the "
                  "workers' cores")
    lines = [
        f"Command: `{command}`", "",
        f"1-row Decode, concurrency {CONCURRENCY} over {CONNECTIONS} connections, model "
        f"`{model}`, one ONNX Runtime intra-op thread per worker; median of {rounds} round(s) "
        f"of {seconds:g} s per run. {one.label}: its process tree under `taskset -c "
        f"{one.server_cores}`, the load generator under `taskset -c {one.load_cores}`. "
        f"{two.label}: started under `taskset -c {two.server_cores}`, then worker i and every "
        "thread of it pinned to core i (checked after every run; the supervisor, which serves "
        f"nothing, stays on {two.server_cores}); the load generator {load_place}. {ghz_note}", "",
        "| setup | load generator | req/s | p50 ms | errors | server CPU µs/req | "
        "req per server-core-s | server cores busy | load generator cores busy | "
        "load generator CPU µs/req |", "|---|---|---|---|---|---|---|---|---|---|"]
    for setup in setups:
        for load in loads:
            runs = results[(setup.label, load.label)]
            lines.append(
                f"| {setup.label} | {load.label} | {median(runs, 'requests_per_s'):,.0f} | "
                f"{median(runs, 'p50_ms'):.2f} | {sum(r.errors for r in runs):.0f} | "
                f"{median(runs, 'cpu_us'):,.0f} | {median(runs, 'per_core_s'):,.0f} | "
                f"{median(runs, 'server_cores'):.2f} | {median(runs, 'load_cores'):.2f} | "
                f"{median(runs, 'load_us'):,.0f} |")
    lines += ["", f"{two.label}, each process's part of the server's CPU and its client "
              "connections (when the most were open), per round:", "",
              "| load generator | process | share of server CPU | connections |", "|---|---|---|---|"]
    for load in loads:
        runs = results[(two.label, load.label)]
        for process in runs[0].share:
            shares = ", ".join(f"{r.share.get(process, 0):.0%}" for r in runs)
            conns = ", ".join(str(r.connections[process]) for r in runs
                              if process in r.connections) or "-"
            lines.append(f"| {load.label} | {process} | {shares} | {conns} |")
    lines += ["", "Requests/s of each round, in the order run: " + "; ".join(
        f"{s.label}, {load.label}: "
        + ", ".join(f"{r.requests_per_s:,.0f}" for r in results[(s.label, load.label)])
        for s in setups for load in loads), ""]
    for load in loads:
        a, b = results[(one.label, load.label)], results[(two.label, load.label)]
        lines.append(f"- 2 workers / 1 worker, {load.label}: requests/s "
                     f"{median(b, 'requests_per_s') / median(a, 'requests_per_s'):.2f}x, "
                     f"server CPU per request {median(b, 'cpu_us') / median(a, 'cpu_us'):.2f}x")
    lines.append("")
    for load in loads:
        a, b = results[(one.label, load.label)], results[(two.label, load.label)]
        per_core = median(b, "per_core_s")
        lines.append(
            f"**Extrapolation (not measured)**, {load.label}: a {NODE_CORES}-core node with "
            f"`--workers {NODE_CORES}` and its load generated on other machines would serve "
            f"{NODE_CORES} x {per_core:,.0f} = {NODE_CORES * per_core:,.0f} requests/s, "
            f"{NODE_CORES} times the requests per server-core-second of {two.label}. It "
            "assumes a worker's cost per request stays what 2 pinned workers measured here and "
            "that nothing shared limits first (the NIC, the kernel's connection spread: one "
            "client connection reaches one worker, so it needs at least one busy connection per "
            f"worker). Measured beside it: 1 worker on its own core, its load on another, "
            f"served {median(a, 'requests_per_s'):,.0f} requests/s at "
            f"{median(a, 'per_core_s'):,.0f} requests per server-core-second.")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.workers_bench", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    p.add_argument("--model", default="mnist", help="model name; its newest version is used")
    p.add_argument("--seconds", type=positive(float), default=5.0, help="length of each load run")
    p.add_argument("--rounds", type=positive(int), default=2,
                   help="rounds, each starting both servers afresh, order alternating")
    p.add_argument("--out", type=Path, default=Path("bench/out/workers.md"),
                   help="the markdown report, also printed")
    p.add_argument("--ghz", default="ghz",
                   help="the ghz binary (a path, or a name on PATH); when absent its rows are "
                   "left out")
    args = p.parse_args(argv)
    require_pinning(p, set(CORES))
    allowed = os.sched_getaffinity(0)
    try:
        manifest = read_manifest(resolve_version(args.repo, args.model, 0))
    except (OSError, ValueError) as err:
        p.error(f"--repo {args.repo} --model {args.model}: {err}")
    spare = ",".join(map(str, sorted(allowed - set(CORES)))) or None
    setups = [Setup("(a) 1 worker, core 0", 1, str(CORES[0]), str(CORES[1])),
              Setup("(b) 2 workers, a core each", 2, ",".join(map(str, CORES)), spare)]
    loads = [Load("load.py", python_load)]
    ghz = shutil.which(args.ghz)
    if ghz is None:
        ghz_note = (f"ghz was not found (--ghz {args.ghz}): its rows are left out; "
                    "get v0.121.0 from https://github.com/bojand/ghz/releases.")
        print(ghz_note, file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        if ghz is not None:
            version = subprocess.run([ghz, "--version"], capture_output=True, text=True)
            ghz_note = (f"ghz {(version.stdout or version.stderr).strip()} sends the same 1-row "
                        "request as bench/load.py.")
            payload = Path(folder) / "decode.bin"
            request = build_request("Decode", 1, tuple(manifest.image_shape), manifest.latent_dim)
            delimited = io.BytesIO()  # ghz reads a bare message as delimited ones if it can
            proto.serialize_length_prefixed(cast(Message, request), delimited)
            payload.write_bytes(delimited.getvalue())
            loads.append(Load("ghz", functools.partial(ghz_load, ghz, payload)))
        results: Results = {}
        for index in range(args.rounds):
            order = 1 if index % 2 == 0 else -1
            for setup in setups[::order]:
                run_setup(setup, loads[::order], args.repo, args.model, args.seconds, results)
    text = report(setups, loads, results, command_line("bench.workers_bench", argv), args.model,
                  args.rounds, args.seconds, ghz_note)
    publish(args.out, text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
