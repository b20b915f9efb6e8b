"""What serving a unary method as client-streaming costs grpc.aio: server CPU per call, in one run.

python -m bench.handler_kind --calls 8000 --rounds 4

vae-serve registers its unary methods as client-streaming handlers that read one message
(service/fronts/status.py), so that a request grpc refuses as too large still reaches the `rpc`
decorator and is counted. This measures that choice on a bare grpc.aio server answering fixed
bytes: `unary` (grpc's unary handler), `read` (client-streaming, one context.read(), as served)
and `iterate` (client-streaming, `async for` over the requests). The server runs on core 0,
the client on core 1 when there are two; rounds alternate the order.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import grpc

from bench.fronts_bench import process_cpu_s
from service.help_format import DefaultsHelpFormatter

ANSWER = b"y" * 300
KINDS = ("unary", "read", "iterate")


async def _serve(port: int) -> None:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return ANSWER

    async def read(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        await context.read()
        return ANSWER

    async def iterate(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        async for _ in requests:
            pass
        return ANSWER

    handlers = {"unary": grpc.unary_unary_rpc_method_handler(unary),
                "read": grpc.stream_unary_rpc_method_handler(read),
                "iterate": grpc.stream_unary_rpc_method_handler(iterate)}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Kind", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _calls(port: int, kind: str, calls: int, concurrency: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/bench.Kind/{kind}")

        async def caller() -> None:
            for _ in range(calls // concurrency):
                await call(b"x" * 300)

        await asyncio.gather(*(caller() for _ in range(concurrency)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.handler_kind", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--calls", type=int, default=8000, help="calls per kind and round")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight, one connection")
    p.add_argument("--port", type=int, default=50991, help="the bare server's port")
    args = p.parse_args(argv)
    two_cores = len(os.sched_getaffinity(0)) > 1
    pin = ["taskset", "-c", "0"] if two_cores else []
    if two_cores:
        os.sched_setaffinity(0, {1})
    server = subprocess.Popen([*pin, sys.executable, "-c", "import asyncio, sys; from bench."
                               f"handler_kind import _serve; asyncio.run(_serve({args.port}))"])
    try:
        time.sleep(2.0)
        asyncio.run(_calls(args.port, "unary", 2000, args.concurrency))  # warm up
        cpu_us: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for round_ in range(args.rounds):
            for kind in KINDS if round_ % 2 == 0 else tuple(reversed(KINDS)):
                before = process_cpu_s(server.pid)
                asyncio.run(_calls(args.port, kind, args.calls, args.concurrency))
                cpu_us[kind].append(1e6 * (process_cpu_s(server.pid) - before) / args.calls)
    finally:
        server.kill()
        server.wait()
    print("| handler | server CPU us/call (per round) | vs unary (median) |")
    print("|---|---|---|")
    median = {kind: sorted(values)[len(values) // 2] for kind, values in cpu_us.items()}
    for kind, values in cpu_us.items():
        print(f"| {kind} | {', '.join(f'{v:.0f}' for v in values)} | "
              f"{median[kind] / median['unary']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
