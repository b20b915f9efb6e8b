"""--workers: N processes on one port, one /metrics for all, restarts, and a clean drain."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from service.config import ConfigError, ServerConfig
from service.transport.workers import RESTART_BACKOFF_S, STABLE_S, restart_backoff
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import free_port, spawn_server
from tests.service.test_bad_repositories import bad_newest
from tests.service.test_tls import SERVER_EXT, make_ca, make_leaf, model_info, secure_channel


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


async def _samples(port: int, connections: int, calls: int) -> None:
    for _ in range(connections):  # each new connection may land on another worker
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            for _ in range(calls):
                await stub.Sample(vae_pb2.SampleRequest(count=1, seed=1), wait_for_ready=True,
                                  timeout=60)


def _scrape(port: int) -> str:
    body: bytes = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    return body.decode()


def _alive(pid: int) -> bool:
    """Running, not exited: an orphan's zombie waits for a reaper that may never come."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Log:
    """A server's stderr, read as it comes (so the pipe never fills) and searched by text."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        self.lines: list[str] = []
        self._reading = asyncio.ensure_future(self._read(proc.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace"))

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_for(self, text: str, count: int = 1) -> None:
        """Until `count` lines hold `text`; fails with the log's tail if the server ends first."""
        async with asyncio.timeout(90):
            while self.count(text) < count:
                assert not self._reading.done(), f"no {text!r} in:\n{''.join(self.lines[-30:])}"
                await asyncio.sleep(0.05)


SERVING = "service.transport.server: serving "
"""What each worker logs once it serves."""


async def _spawn(repo: Path, **settings: str) -> tuple[asyncio.subprocess.Process, int, Log]:
    """Two workers, polling off, their log read; returns once both serve."""
    proc, port = await spawn_server(repo, stderr=asyncio.subprocess.PIPE,
                                    **{"workers": "2", "poll_interval_s": "0", **settings})
    log = Log(proc)
    await log.wait_for(SERVING, 2)
    return proc, port, log


async def _new_child(pid: int, seen: set[int]) -> int:
    async with asyncio.timeout(60):
        while not _children(pid) - seen:
            await asyncio.sleep(0.05)
    return min(_children(pid) - seen)


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 30)


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """TMPDIR for the servers this test spawns, so what they leave there can be seen."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    yield folder


async def test_two_workers_one_metrics_endpoint_restart_and_drain(model_repo: Path,
                                                                  own_tmp: Path) -> None:
    metrics_port = free_port()
    proc, port = await spawn_server(model_repo, workers="2", metrics_port=str(metrics_port),
                                    poll_interval_s="0")
    try:
        await _samples(port, connections=8, calls=5)
        workers = _children(proc.pid)
        assert len(workers) == 2
        assert len(list(own_tmp.glob("vae-serve-metrics-*"))) == 1
        assert 'vae_requests_total{code="OK",method="Sample"} 40.0' in _scrape(metrics_port)
        os.kill(min(workers), signal.SIGKILL)  # a worker dies: the parent starts another
        async with asyncio.timeout(30):
            while len(_children(proc.pid) - {min(workers)}) < 2:
                await asyncio.sleep(0.05)
        await _samples(port, connections=4, calls=2)  # served while the new one loads
    finally:
        proc.send_signal(signal.SIGTERM)  # the new worker may still be loading: exits 0 too
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert list(own_tmp.glob("vae-serve-metrics-*")) == []  # removed at exit


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
async def test_a_tls_worker_is_restarted_beside_its_sibling_on_the_health_port(
        model_repo: Path, tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "test-ca")
    cert = make_leaf(tmp_path, "vae-serve-1", ca, 1, SERVER_EXT)
    proc, port, log = await _spawn(model_repo, tls_cert_file=str(cert.cert),
                                   tls_key_file=str(cert.key), health_port=str(free_port()))
    try:
        killed = min(_children(proc.pid))
        os.kill(killed, signal.SIGKILL)  # its sibling holds the shared health port meanwhile
        await log.wait_for(SERVING, 3)
        assert len(_children(proc.pid) - {killed}) == 2
        async with secure_channel(port, ca) as channel:
            assert (await model_info(channel)).version == 1
    finally:
        assert await _stop(proc) == 0


async def test_a_restarted_worker_starts_on_the_newest_good_version(model_repo: Path,
                                                                    tmp_path: Path) -> None:
    repo = bad_newest(model_repo, tmp_path)
    shutil.move(repo / "vae" / "2", tmp_path / "held")
    proc, port, log = await _spawn(repo)
    try:
        shutil.move(tmp_path / "held", repo / "vae" / "2")  # a bad version appears on disk
        os.kill(min(_children(proc.pid)), signal.SIGKILL)
        await log.wait_for(SERVING, 3)
        await _samples(port, connections=4, calls=2)
    finally:
        assert await _stop(proc) == 0
    assert log.count("decoder.onnx: sha256") == 1 and log.count("refused") == 1


async def test_sigterm_during_the_restart_backoff_stops_at_once(model_repo: Path) -> None:
    proc, _, log = await _spawn(model_repo)
    seen = _children(proc.pid)
    victim = min(seen)
    try:
        for delay in RESTART_BACKOFF_S:  # each restart is killed as it starts: 1, 2, 5, 10, 30 s
            os.kill(victim, signal.SIGKILL)
            await log.wait_for(f"restarting it in {delay:.0f} s")
            if delay != RESTART_BACKOFF_S[-1]:
                victim = await _new_child(proc.pid, seen)
                seen.add(victim)
        proc.send_signal(signal.SIGTERM)  # now in the 30 s backoff
        code = await asyncio.wait_for(proc.wait(), 10)  # a bound on a hang, not a timing
    finally:
        await _stop(proc)
    assert code == 0


async def test_workers_of_a_killed_supervisor_stop_by_themselves(model_repo: Path) -> None:
    proc, _, _ = await _spawn(model_repo)
    workers = _children(proc.pid)
    proc.kill()
    try:
        async with asyncio.timeout(30):
            while any(_alive(pid) for pid in workers):
                await asyncio.sleep(0.05)
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        await proc.wait()


async def test_a_swap_under_workers_logs_no_label_removal_warning(model_repo: Path,
                                                                  tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(model_repo / "vae" / "1", repo / "vae" / "1")
    metrics_port = free_port()
    proc, _, log = await _spawn(repo, metrics_port=str(metrics_port))
    try:
        second = shutil.copytree(repo / "vae" / "1", tmp_path / "2")
        manifest = json.loads((second / "manifest.json").read_text())
        (second / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))
        second.rename(repo / "vae" / "2")
        proc.send_signal(signal.SIGHUP)
        await log.wait_for("now serving vae/2", 2)
        info = [line for line in _scrape(metrics_port).splitlines()
                if line.startswith("vae_model_info{")]
    finally:
        assert await _stop(proc) == 0
    assert log.count("Removal of labels") == 0
    assert sorted(line.rpartition(" ")[2] for line in info) == ["0.0", "1.0"]
    assert next(line for line in info if line.endswith(" 1.0")).count('version="2"') == 1


def test_the_restart_backoff_grows_and_starts_over_after_a_stable_run() -> None:
    delays = []
    restarts = 0
    for _ in range(7):
        delay, restarts = restart_backoff(restarts, served_s=STABLE_S / 2)
        delays.append(delay)
    assert delays == [*RESTART_BACKOFF_S, 30.0, 30.0]
    assert restart_backoff(restarts, served_s=STABLE_S) == (RESTART_BACKOFF_S[0], 1)


def test_workers_need_a_fixed_port() -> None:
    with pytest.raises(ConfigError, match="needs a fixed --port"):
        ServerConfig.from_args(["--workers", "2", "--port", "0"], environ={})
    tls = ["--tls-cert-file", "c.pem", "--tls-key-file", "k.pem", "--port", "1"]
    with pytest.raises(ConfigError, match="needs a fixed --health-port"):
        ServerConfig.from_args(["--workers", "2", "--health-port", "0", *tls], environ={})
    assert ServerConfig.from_args(["--workers", "auto"], environ={}).workers == 0
