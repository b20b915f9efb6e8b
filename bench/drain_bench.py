"""A rolling update's stop, measured: two replicas behind one round_robin client, one SIGTERMed.

python -m bench.drain_bench --repo models --model vae --concurrency 8 --drain-delay-s 0.5

Starts two servers (bench/serve_bench.vae_server, each its own process on 127.0.0.1), sends
1-row Decode calls from --concurrency callers over one channel that balances round_robin over
both, SIGTERMs the first after --warm-s, keeps the traffic going until it has exited and
--after-s more, then prints one JSON line: calls, failed (by status code), stop_s (SIGTERM to
exit) and exit_code. About --warm-s + stop_s + --after-s + 10 s of start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import time
from pathlib import Path

import grpc
import numpy as np

from bench.serve_bench import vae_server
from service.fronts.tensors import to_tensor
from service.help_format import DefaultsHelpFormatter
from service.vae.v1 import vae_pb2, vae_pb2_grpc

ROUND_ROBIN = [("grpc.lb_policy_name", "round_robin")]
HEALTH_CHECKED = [("grpc.service_config", json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name}}))]
"""round_robin that also leaves a replica whose health Watch says NOT_SERVING."""


def round_robin_target(ports: list[int]) -> str:
    """One channel over every replica, as a headless Service's DNS answer gives a client."""
    return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)


async def steady_calls(stub: vae_pb2_grpc.VaeServiceStub, latent_dim: int, concurrency: int,
                       stop: asyncio.Event) -> collections.Counter[str]:
    """1-row Decode calls from `concurrency` callers, one after another, until `stop`: the
    outcomes by status code name."""
    request = vae_pb2.DecodeRequest(latents=to_tensor(np.zeros((1, latent_dim), np.float32)))
    outcomes: collections.Counter[str] = collections.Counter()

    async def caller() -> None:
        while not stop.is_set():
            try:
                await stub.Decode(request, timeout=30)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as err:
                outcomes[err.code().name] += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return outcomes


async def rolling_stop(repo: Path, model: str, concurrency: int, warm_s: float, after_s: float,
                       settings: dict[str, float], options: list[tuple[str, str]]
                       ) -> dict[str, object]:
    servers = [vae_server(repo, model, **settings) for _ in range(2)]  # type: ignore[arg-type]
    try:
        async with grpc.aio.insecure_channel(round_robin_target([s.port for s in servers]),
                                             options=options) as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            info = await stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=30)
            stop = asyncio.Event()
            traffic = asyncio.ensure_future(steady_calls(stub, info.latent_dim, concurrency, stop))
            await asyncio.sleep(warm_s)
            servers[0].proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            exit_code = await asyncio.to_thread(servers[0].proc.wait, 120)
            stop_s = time.monotonic() - signalled
            await asyncio.sleep(after_s)
            stop.set()
            outcomes = await traffic
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.stop()
    return {"calls": sum(outcomes.values()), "failed": {code: n for code, n in outcomes.items()
                                                        if code != "OK"},
            "stop_s": round(stop_s, 3), "exit_code": exit_code}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.drain_bench", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    p.add_argument("--model", default="vae", help="model name; its newest version is used")
    p.add_argument("--concurrency", type=int, default=8, help="callers, one call at a time each")
    p.add_argument("--warm-s", type=float, default=2.0, help="traffic before the SIGTERM")
    p.add_argument("--after-s", type=float, default=1.0, help="traffic after the replica exited")
    p.add_argument("--grace-s", type=float, default=10.0, help="the servers' --grace-s")
    p.add_argument("--drain-delay-s", type=float, default=None,
                   help="the servers' --drain-delay-s (default: the server's own)")
    p.add_argument("--health-check", action="store_true",
                   help="the client also watches each replica's health (healthCheckConfig)")
    args = p.parse_args(argv)
    settings = {"grace_s": args.grace_s}
    if args.drain_delay_s is not None:
        settings["drain_delay_s"] = args.drain_delay_s
    result = asyncio.run(rolling_stop(args.repo, args.model, args.concurrency, args.warm_s,
                                      args.after_s, settings,
                                      HEALTH_CHECKED if args.health_check else ROUND_ROBIN))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
