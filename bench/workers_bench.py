"""--workers 2 against --workers 1, in one run: 1-row Decode at concurrency 64 over 8 connections.

python -m bench.workers_bench --repo models --model vae --seconds 5 --rounds 2

Each round starts a server with 1 worker and one with 2 (alternating order), and runs the
load generator (bench/load.py, its own process, 8 connections: the kernel spreads
connections, not calls, over the workers) against each. About rounds x (2 x --seconds + 15 s).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.serve_bench import run_load, vae_server
from service.help_format import DefaultsHelpFormatter

CONCURRENCY = 64
CONNECTIONS = 8


def requests_per_s(repo: Path, model: str, workers: int, seconds: float) -> float:
    server = vae_server(repo, model, workers=workers)
    time.sleep(2.0)  # health answers once the first worker is up; let every worker warm up
    try:
        result = run_load(server.port, "Decode", 1, CONCURRENCY, seconds,
                          "--connections", str(CONNECTIONS))
    finally:
        server.stop()
    return result["requests_per_s"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.workers_bench", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    p.add_argument("--model", default="vae", help="model name; its newest version is used")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each load run")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    args = p.parse_args(argv)
    results: dict[int, list[float]] = {1: [], 2: []}
    for round_ in range(args.rounds):
        for workers in ((1, 2) if round_ % 2 == 0 else (2, 1)):
            results[workers].append(requests_per_s(args.repo, args.model, workers, args.seconds))
    one, two = (sum(results[w]) / len(results[w]) for w in (1, 2))
    print(f"1-row Decode, concurrency {CONCURRENCY}, {CONNECTIONS} connections, model "
          f"{args.model}, {args.rounds} rounds of {args.seconds:.0f} s\n")
    print("| workers | requests/s per round | mean |\n|---|---|---|")
    for workers in (1, 2):
        print(f"| {workers} | {', '.join(f'{r:.0f}' for r in results[workers])} | "
              f"{sum(results[workers]) / len(results[workers]):.0f} |")
    print(f"\n2 workers / 1 worker: {two / one:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
