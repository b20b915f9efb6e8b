"""Two commits of vae-serve on the serving benchmark's points, alternating in one run.

python -m bench.code_ab --old 14ac68b --new HEAD --repo models --model vae --rounds 3

Checks out both commits into temporary git worktrees, then for each round starts a server
from each tree in turn (the order alternating) on a free port of 127.0.0.1 and measures,
with this tree's bench/load.py, vae.v1 Decode and KServe v2 vae.decoder at 1 row c=1, 1 row
c=64 and 64 rows c=8. Prints, per point and commit, requests/s and server CPU µs per request
(mean over rounds) and the run-to-run noise: the spread (max - min) / mean between rounds of
the same commit. A change moves a point beyond noise when new/old differs by more than it.
--repo must hold a version both commits read (export it with the older one).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.fronts_bench import process_cpu_s
from bench.report import command_line, publish
from bench.serve_bench import Server, free_port, run_load
from service.help_format import DefaultsHelpFormatter

POINTS = (("v1", 1, 1), ("v1", 1, 64), ("v1", 64, 8), ("v2", 1, 1), ("v2", 1, 64), ("v2", 64, 8))
"""(protocol, rows per request, concurrency)."""
ROOT = Path(__file__).resolve().parents[1]


def server_from(tree: Path, repo: Path, model: str) -> Server:
    port, metrics_port = free_port(), free_port()
    argv = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tree)!r}); "
            "from service.cli import main; sys.exit(main())", "--model-repo", str(repo.resolve()),
            "--model-name", model, "--port", str(port), "--metrics-port", str(metrics_port),
            "--log-level", "WARNING"]
    return Server(argv, port, metrics_port, health=True)


def measure(tree: Path, repo: Path, model: str, seconds: float) -> list[tuple[float, float]]:
    """(requests/s, server CPU µs per request) at each point, one server for all."""
    server = server_from(tree, repo, model)
    try:
        results = []
        for protocol, rows, concurrency in POINTS:
            before = process_cpu_s(server.proc.pid)
            run = run_load(server.port, "Decode", rows, concurrency, seconds, "--protocol", protocol)
            cpu_us = 1e6 * (process_cpu_s(server.proc.pid) - before) / max(run["requests"], 1)
            results.append((run["requests_per_s"], cpu_us))
        return results
    finally:
        server.stop()


def table(runs: dict[str, list[list[tuple[float, float]]]], names: dict[str, str]) -> list[str]:
    lines = ["| point | commit | requests/s | noise | server CPU µs/request | noise |",
             "|---|---|---:|---:|---:|---:|"]
    for index, (protocol, rows, concurrency) in enumerate(POINTS):
        means = {}
        for key, rounds in runs.items():
            rates = np.array([r[index][0] for r in rounds])
            cpus = np.array([r[index][1] for r in rounds])
            means[key] = rates.mean(), cpus.mean()
            lines.append(f"| {protocol} {rows} row(s) c={concurrency} | {names[key]} | "
                         f"{rates.mean():,.0f} | {np.ptp(rates) / rates.mean():.0%} | "
                         f"{cpus.mean():,.0f} | {np.ptp(cpus) / cpus.mean():.0%} |")
        lines.append(f"| {protocol} {rows} row(s) c={concurrency} | new / old | "
                     f"{means['new'][0] / means['old'][0]:.2f} | | "
                     f"{means['new'][1] / means['old'][1]:.2f} | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.code_ab", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--old", required=True, help="git ref of the baseline")
    p.add_argument("--new", default="HEAD", help="git ref of the change")
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--model", default="vae")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0, help="length of each load run")
    p.add_argument("--out", type=Path, default=Path("bench/out/code_ab.md"))
    args = p.parse_args(argv)
    names = {"old": args.old, "new": args.new}
    with tempfile.TemporaryDirectory() as folder:
        trees = {key: Path(folder) / key for key in names}
        for key, ref in names.items():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(trees[key]),
                            ref], check=True, capture_output=True)
        try:
            runs: dict[str, list[list[tuple[float, float]]]] = {key: [] for key in names}
            for r in tqdm(range(args.rounds), desc="rounds"):
                for key in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    runs[key].append(measure(trees[key], args.repo, args.model, args.seconds))
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(tree)], check=False, capture_output=True)
    command = command_line("bench.code_ab", argv)
    text = "\n".join([f"`{command.strip()}`", "", *table(runs, names)]) + "\n"
    publish(args.out, text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
