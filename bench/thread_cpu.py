"""Server CPU per request, thread by thread: vae-serve against the bare grpc.aio server.

python -m bench.thread_cpu --repo models --model vae --items 1 --concurrency 64

Starts each server on 127.0.0.1, drives it with the load generator (bench/load.py, its own
process) for --seconds, and reads every server thread's CPU time from /proc before and
after: where a request's cost lands (the event loop, grpc's threads, ONNX Runtime's), which
a profile of the loop alone cannot show. Linux only. About 2 x (--seconds + 5 s).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.serve_bench import bare_server, run_load, vae_server
from service.help_format import DefaultsHelpFormatter
from service.plane.repository import read_manifest, resolve_version

Threads = dict[str, tuple[str, float]]
"""Thread id -> (name, CPU seconds so far)."""


def thread_cpu(pid: int) -> Threads:
    ticks = os.sysconf("SC_CLK_TCK")
    threads: Threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        fields = rest.split()
        if tid == str(pid):
            name = "main: the event loop"
        threads[tid] = (name, (int(fields[11]) + int(fields[12])) / ticks)  # utime + stime
    return threads


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.thread_cpu", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    p.add_argument("--model", default="vae", help="model name; its newest version is used")
    p.add_argument("--method", choices=("Decode", "Encode"), default="Decode")
    p.add_argument("--items", type=int, default=1, help="rows per request")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each load run")
    args = p.parse_args(argv)
    manifest = read_manifest(resolve_version(args.repo, args.model, 0))
    servers = {"vae-serve": lambda: vae_server(args.repo, args.model),
               "bare grpc.aio server": lambda: bare_server(tuple(manifest.image_shape),
                                                           manifest.latent_dim, args.items)}
    print(f"{args.method}, {args.items} row(s) per request, concurrency {args.concurrency}, "
          f"model {args.model}: server CPU µs per request by thread\n")
    print("| server | requests/s | thread | µs per request |\n|---|---|---|---|")
    for label, start in servers.items():
        server = start()
        try:
            before = thread_cpu(server.proc.pid)
            result = run_load(server.port, args.method, args.items, args.concurrency,
                              args.seconds)
            after = thread_cpu(server.proc.pid)
        finally:
            server.stop()
        per_request = {tid: (name, (cpu - before.get(tid, (name, 0.0))[1]) / result["requests"])
                       for tid, (name, cpu) in after.items()}
        busy = sorted((us for us in per_request.values() if us[1] > 1e-6), key=lambda t: -t[1])
        total = sum(us for _, us in busy)
        for name, us in busy:
            print(f"| {label} | {result['requests_per_s']:.0f} | {name} | {us * 1e6:.1f} |")
        print(f"| {label} | {result['requests_per_s']:.0f} | all | {total * 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
