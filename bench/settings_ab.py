"""Server settings against each other, interleaved in one run: the A/B behind a changed default.

python -m bench.settings_ab --repo models --model vae --setting "one=--instances 1" \
    --setting "auto=" --point Decode:64:8 --point Decode:1:64 --rounds 3

Each round starts one server per --setting (NAME=FLAGS, FLAGS passed to vae-serve; empty =
the defaults), in rotated order, and drives every --point (METHOD:ITEMS:CONCURRENCY) with
the load generator (bench/load.py, its own process, 8 connections). Interleaving spreads
this machine's noise over every setting instead of tilting one. Prints requests/s and p50
per round as a markdown table. About rounds x settings x (points x --seconds + 5 s).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bench.serve_bench import Server, free_port, run_load
from service.help_format import DefaultsHelpFormatter

Point = tuple[str, int, int]
"""(method, items per request, concurrency)."""


def parse_setting(text: str) -> tuple[str, list[str]]:
    name, sep, flags = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=FLAGS, e.g. 'two=--instances 2'")
    return name, shlex.split(flags)


def parse_point(text: str) -> Point:
    try:
        method, items, concurrency = text.split(":")
        if method not in ("Decode", "Encode"):
            raise ValueError
        return method, int(items), int(concurrency)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write METHOD:ITEMS:CONCURRENCY, METHOD Decode or Encode") from None


def start(repo: Path, model: str, flags: list[str]) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "service.cli", "--model-repo", str(repo), "--model-name", model,
            "--port", str(port), "--metrics-port", "-1", "--log-level", "WARNING", *flags]
    return Server(argv, port, None, health=True)


def measure(server: Server, point: Point, seconds: float) -> tuple[float, float]:
    """(requests/s, p50 ms) of one load run."""
    result = run_load(server.port, *point, seconds)
    return result["requests_per_s"], result["p50_ms"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.settings_ab", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    p.add_argument("--model", default="vae", help="model name; its newest version is used")
    p.add_argument("--setting", type=parse_setting, action="append", required=True,
                   help="NAME=FLAGS, repeated: one server setting to compare")
    p.add_argument("--point", type=parse_point, action="append", required=True,
                   help="METHOD:ITEMS:CONCURRENCY, repeated: one load point")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each load run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = p.parse_args(argv)
    settings: list[tuple[str, list[str]]] = args.setting
    results: dict[tuple[str, Point], list[tuple[float, float]]] = {}
    for round_ in range(args.rounds):
        shift = round_ % len(settings)
        for name, flags in settings[shift:] + settings[:shift]:
            server = start(args.repo, args.model, flags)
            try:
                for point in args.point:
                    results.setdefault((name, point), []).append(
                        measure(server, point, args.seconds))
            finally:
                server.stop()
    print(f"Model {args.model}, {args.rounds} interleaved rounds of {args.seconds:g} s per point; "
          "requests/s (p50 ms) per round\n")
    print("| point | setting | flags | rounds | mean requests/s |\n|---|---|---|---|---|")
    for point in args.point:
        for name, flags in settings:
            runs = results[(name, point)]
            cells = ", ".join(f"{rps:.0f} ({p50:.2f})" for rps, p50 in runs)
            mean = sum(rps for rps, _ in runs) / len(runs)
            print(f"| {':'.join(map(str, point))} | {name} | `{shlex.join(flags)}` | {cells} | "
                  f"{mean:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
