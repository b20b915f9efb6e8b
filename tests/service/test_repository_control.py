"""Only an operator changes what is served: v2 repository control is off by default, then only
for callers sending the configured header; a Load holds for every worker and survives restarts."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import pytest

from service.config import ConfigError, HeaderCredential, ServerConfig
from service.inference import grpc_service_pb2 as pb
from service.inference import grpc_service_pb2_grpc as pb_grpc
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import StartServer, spawn_server
from tests.service.conftest import publish
from tests.service.test_workers import _children

ADMIN = (("x-vae-admin", "s3cret"),)
CONTROL = {"repository_control": True, "repository_control_header": HeaderCredential(*ADMIN[0])}
Answer = tuple[grpc.StatusCode, str]


def _load(version: int) -> pb.RepositoryModelLoadRequest:
    return pb.RepositoryModelLoadRequest(
        model_name="vae", parameters={"version": pb.ModelRepositoryParameter(int64_param=version)})


async def _call(port: int, method: str, request: object,
                metadata: tuple[tuple[str, str], ...] = ()) -> Answer:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await getattr(pb_grpc.GRPCInferenceServiceStub(channel), method)(
                request, metadata=metadata, wait_for_ready=True, timeout=120)
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


async def _versions_seen(port: int, connections: int) -> list[int]:
    """GetModelInfo over `connections` new connections: each may reach another worker."""
    seen = []
    for _ in range(connections):
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            info = await vae_pb2_grpc.VaeServiceStub(channel).GetModelInfo(
                vae_pb2.GetModelInfoRequest(), wait_for_ready=True, timeout=120)
            seen.append(info.version)
    return seen


async def test_repository_control_is_off_by_default(start_server: StartServer, live_repo: Path,
                                                    variant_runs: list[Path]) -> None:
    await asyncio.to_thread(publish, variant_runs[0], live_repo, 2)
    running = await start_server(model_repo=live_repo, poll_interval_s=0)
    load = await _call(running.port, "RepositoryModelLoad", _load(1), ADMIN)
    unload = await _call(running.port, "RepositoryModelUnload",
                         pb.RepositoryModelUnloadRequest(model_name="vae"), ADMIN)
    index = await _call(running.port, "RepositoryIndex", pb.RepositoryIndexRequest())
    for code, message in (load, unload):
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "repository control is off" in message and "--repository-control on" in message
    assert index[0] == grpc.StatusCode.OK and running.plane.current.number == 2
    assert not (live_repo / "vae" / "pin.json").exists()


async def test_only_the_header_holder_may_load(start_server: StartServer, live_repo: Path,
                                               variant_runs: list[Path]) -> None:
    await asyncio.to_thread(publish, variant_runs[0], live_repo, 2)
    running = await start_server(model_repo=live_repo, poll_interval_s=0, **CONTROL)
    missing = await _call(running.port, "RepositoryModelLoad", _load(1))
    wrong = await _call(running.port, "RepositoryModelLoad", _load(1), (("x-vae-admin", "guess"),))
    served_after_refusals = running.plane.current.number
    allowed = await _call(running.port, "RepositoryModelLoad", _load(1), ADMIN)
    for code, message in (missing, wrong):
        assert code == grpc.StatusCode.UNAUTHENTICATED and "'x-vae-admin'" in message
        assert "s3cret" not in message
    assert served_after_refusals == 2 and allowed[0] == grpc.StatusCode.OK
    assert running.plane.current.number == 1
    refused = running.metrics.registry.get_sample_value(
        "vae_requests_total", {"method": "RepositoryModelLoad", "code": "UNAUTHENTICATED"})
    assert refused == 2


async def test_a_refused_load_changes_nothing(start_server: StartServer, live_repo: Path,
                                              variant_runs: list[Path]) -> None:
    running = await start_server(model_repo=live_repo, poll_interval_s=0, **CONTROL)
    await asyncio.to_thread(publish, variant_runs[0], live_repo, 2, True)  # tampered
    code, message = await _call(running.port, "RepositoryModelLoad", _load(2), ADMIN)
    await asyncio.to_thread(publish, variant_runs[1], live_repo, 3)
    await running.watcher.rescan()
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "sha256" in message
    assert running.plane.current.number == 3 and not (live_repo / "vae" / "pin.json").exists()


async def test_a_load_survives_a_restart_and_an_empty_load_unpins(
        start_server: StartServer, live_repo: Path, variant_runs: list[Path]) -> None:
    await asyncio.to_thread(publish, variant_runs[0], live_repo, 2)
    first = await start_server(model_repo=live_repo, poll_interval_s=0, **CONTROL)
    assert (await _call(first.port, "RepositoryModelLoad", _load(1), ADMIN))[0] == grpc.StatusCode.OK
    await first.stop(1.0)
    second = await start_server(model_repo=live_repo, poll_interval_s=0, **CONTROL)
    restarted_on = second.plane.current.number
    unpinned = await _call(second.port, "RepositoryModelLoad",
                           pb.RepositoryModelLoadRequest(model_name="vae"), ADMIN)
    assert restarted_on == 1 and unpinned[0] == grpc.StatusCode.OK
    assert second.plane.current.number == 2 and not (live_repo / "vae" / "pin.json").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--repository-control", "on"], "needs --repository-control-header"),
    (["--repository-control-header", "x-a=b"], "goes with --repository-control on"),
    (["--repository-control", "on", "--repository-control-header", "x-a"], "KEY=VALUE"),
    (["--repository-control", "on", "--repository-control-header", "X-A=b"], "lower-case"),
    (["--repository-control", "on", "--repository-control-header", "grpc-a=b"], "grpc-"),
    (["--repository-control", "on", "--repository-control-header", "x-a="], "empty"),
])
def test_repository_control_settings(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig.from_args(argv, environ={})


def test_the_credential_is_not_shown() -> None:
    config = ServerConfig.from_args(["--repository-control", "on"], environ={
        "VAE_SERVE_REPOSITORY_CONTROL_HEADER": "x-vae-admin=s3cret"})
    assert config.repository_control_header == HeaderCredential("x-vae-admin", "s3cret")
    assert "s3cret" not in repr(config)


async def test_a_load_under_two_workers_holds_for_every_worker_and_after_a_restart(
        live_repo: Path, variant_runs: list[Path]) -> None:
    await asyncio.to_thread(publish, variant_runs[0], live_repo, 2)
    proc, port = await spawn_server(live_repo, workers="2", poll_interval_s="0",
                                    repository_control="on",
                                    repository_control_header="x-vae-admin=s3cret")
    try:
        assert set(await _versions_seen(port, 8)) == {2}
        assert await _call(port, "RepositoryModelLoad", _load(1), ADMIN) == (grpc.StatusCode.OK, "")
        after_load = await _versions_seen(port, 16)  # at once: the answer waited for both
        workers = _children(proc.pid)
        os.kill(min(workers), signal.SIGKILL)  # its replacement must come back on version 1
        async with asyncio.timeout(60):
            while len(_children(proc.pid) - {min(workers)}) < 2:
                await asyncio.sleep(0.05)
        after_restart = await _versions_seen(port, 16)
    finally:
        proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert set(after_load) == {1} and set(after_restart) == {1}
