"""The two fronts on one server: vae.v1 Decode against KServe v2 ModelInfer on MODEL.decoder.

python -m bench.fronts_bench --repo models --model vae --seconds 5

Starts one `vae-serve` on 127.0.0.1 (a free port, metrics off) serving the newest version of
--model, and measures both protocols with bench/load.py (its own process, closed loop,
bounded) at three points: 1 row at concurrency 1, 1 row at concurrency 64, 64 rows at
concurrency 8. Both protocols run back to back at each point, --rounds times, the order
alternating (v1 v2, then v2 v1), so a drift of the machine weighs on both alike. Prints a
markdown table: requests/s and items/s over all rounds, p50/p99 (mean over rounds), and v2/v1
of requests/s (goal: v2 within 10 % of v1 everywhere), with the CPU time per request of the
server and of the load generator: on a shared machine the steadier measure of what each front
costs. About 3 x 2 x --rounds x (--seconds + 1.5) s plus a few seconds of start-up: under 90 s
at the defaults on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from bench.load import GRAPH_OF
from bench.serve_bench import Server, free_port, run_load
from service.help_format import DefaultsHelpFormatter
from service.plane.repository import published_versions, resolve_version

POINTS = ((1, 1), (1, 64), (64, 8))
"""(items per request, concurrency)."""
PROTOCOLS = ("v1", "v2")
GOAL = 0.9
"""v2 requests/s over v1 requests/s at every point."""


@dataclass
class Point:
    items: int
    concurrency: int
    runs: dict[str, list[dict[str, float]]] = field(
        default_factory=lambda: {p: [] for p in PROTOCOLS})

    def requests_per_s(self, protocol: str) -> float:
        runs = self.runs[protocol]
        return sum(r["requests"] for r in runs) / sum(r["seconds"] for r in runs)

    def cpu_us_per_request(self, protocol: str, key: str) -> float:
        runs = self.runs[protocol]
        return 1e6 * sum(r[key] for r in runs) / sum(r["requests"] for r in runs)

    def mean(self, protocol: str, key: str) -> float:
        return sum(r[key] for r in self.runs[protocol]) / len(self.runs[protocol])

    def ratio(self) -> float:
        return self.requests_per_s("v2") / self.requests_per_s("v1")

    def round_ratios(self) -> list[float]:
        return [b["requests_per_s"] / a["requests_per_s"]
                for a, b in zip(self.runs["v1"], self.runs["v2"], strict=True)]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far, its threads included (ONNX Runtime's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(server: Server, protocol: str, method: str, point: Point, seconds: float
         ) -> dict[str, float]:
    """One load run; adds the CPU seconds the server spent on it, which a busy machine
    disturbs less than requests/s (bench.load reports its own as cpu_s)."""
    before = process_cpu_s(server.proc.pid)
    result = run_load(server.port, method, point.items, point.concurrency, seconds,
                      "--protocol", protocol)
    result["server_cpu_s"] = process_cpu_s(server.proc.pid) - before
    return result


def run(repo: Path, model: str, method: str, seconds: float, rounds: int) -> list[Point]:
    port = free_port()
    server = Server([sys.executable, "-m", "service.cli", "--model-repo", str(repo), "--model-name",
                     model, "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1",
                     "--log-level", "WARNING"], port, None, health=True)
    points = [Point(items, concurrency) for items, concurrency in POINTS]
    order = [(point, k) for point in points for k in range(rounds)]
    try:
        with tqdm(total=len(order) * len(PROTOCOLS), desc="load runs", unit="run",
                  disable=None) as bar:
            for point, k in order:
                for protocol in PROTOCOLS if k % 2 == 0 else PROTOCOLS[::-1]:
                    point.runs[protocol].append(load(server, protocol, method, point, seconds))
                    bar.update()
    finally:
        server.stop()
    return points


def report(points: list[Point], command: str, model: str, version: int, method: str) -> str:
    graph = GRAPH_OF[method]
    lines = [f"Command: `{command}` (model `{model}` version {version}; vae.v1 {method} against "
             f"v2 ModelInfer `{model}.{graph}` with raw_input_contents, one server)", "",
             "| items/req | concurrency | protocol | req/s | items/s | p50 ms | p99 ms | errors | "
             "server CPU us/req | client CPU us/req | v2/v1 req/s (per round) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        for protocol in PROTOCOLS:
            errors = sum(r["errors"] for r in p.runs[protocol])
            ratio = "" if protocol == "v1" else (
                f"**{p.ratio():.3f}** ({', '.join(f'{r:.2f}' for r in p.round_ratios())})")
            lines.append(f"| {p.items} | {p.concurrency} | {protocol} | "
                         f"{p.requests_per_s(protocol):.0f} | "
                         f"{p.requests_per_s(protocol) * p.items:.0f} | "
                         f"{p.mean(protocol, 'p50_ms'):.2f} | {p.mean(protocol, 'p99_ms'):.2f} | "
                         f"{errors:.0f} | {p.cpu_us_per_request(protocol, 'server_cpu_s'):.0f} | "
                         f"{p.cpu_us_per_request(protocol, 'cpu_s'):.0f} | {ratio} |")
    missed = [p for p in points if p.ratio() < GOAL]
    verdict = ("met at every point" if not missed else "missed at " + ", ".join(
        f"{p.items} row(s) x concurrency {p.concurrency}" for p in missed))
    lines += ["", f"Goal v2 >= {GOAL:.0%} of v1 requests/s: {verdict}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fronts_bench", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    p.add_argument("--model", default="vae", help="model name; its newest version is served")
    p.add_argument("--method", choices=tuple(GRAPH_OF), default="Decode",
                   help="v1 method; v2 uses the model of the same graph")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each load run")
    p.add_argument("--rounds", type=int, default=2, help="runs per protocol and point")
    args = p.parse_args(argv)
    if not published_versions(args.repo, args.model):
        p.error(f"no published version of {args.model} in {args.repo}; run make export first")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    version = int(resolve_version(args.repo, args.model, 0).name)
    points = run(args.repo, args.model, args.method, args.seconds, args.rounds)
    command = "python -m bench.fronts_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    print(report(points, command.strip(), args.model, version, args.method))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
