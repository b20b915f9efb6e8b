"""Every port flag of vae-serve: a busy port, or two flags on one port, stops the start before
the model loads, in one line naming the flag and the port, exit 2, with one worker or several."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import ROOT
from tests.service.test_tls import SERVER_EXT, make_ca, make_leaf

FLAGS = ("--port", "--metrics-port", "--health-port")


@contextlib.contextmanager
def _busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def _free_ports(names: tuple[str, ...]) -> dict[str, str]:
    """A distinct free port per name: all held open while chosen, so none is handed out twice."""
    with contextlib.ExitStack() as stack:
        held = {name: stack.enter_context(_busy_port()) for name in names}
    return {name: str(port) for name, port in held.items()}


def _serve(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """vae-serve in its own session, which is killed whole afterwards (a worker left behind
    by a failed start would keep serving)."""
    process = subprocess.Popen([sys.executable, "-m", "service.cli", *argv], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def tls_flags(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    folder = tmp_path_factory.mktemp("pki")
    leaf = make_leaf(folder, "vae-serve", make_ca(folder, "ca"), 1, SERVER_EXT)
    return ["--tls-cert-file", str(leaf.cert), "--tls-key-file", str(leaf.key)]


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("flag", FLAGS)
def test_a_busy_port_is_one_line_naming_its_flag(model_repo: Path, tls_flags: list[str],
                                                 flag: str, workers: str) -> None:
    with _busy_port() as busy:
        ports = _free_ports(FLAGS) | {flag: str(busy)}  # chosen while `busy` is held
        done = _serve(["--model-repo", str(model_repo), "--workers", workers, *tls_flags,
                       *(item for pair in ports.items() for item in pair)])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"vae-serve: error: {flag} {busy}: 127.0.0.1:{busy} is in use" in done.stderr


@pytest.mark.parametrize(("first", "second"), [("--port", "--metrics-port"),
                                               ("--metrics-port", "--health-port")])
def test_two_flags_on_one_port_is_one_line(model_repo: Path, tls_flags: list[str], first: str,
                                           second: str) -> None:
    ports = _free_ports(FLAGS)
    ports[second] = ports[first]
    shared = ports[first]
    done = _serve(["--model-repo", str(model_repo), *tls_flags,
                   *(item for pair in ports.items() for item in pair)])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"vae-serve: error: {second} {shared} is also {first}" in done.stderr


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:  # the field after the state is the parent's pid
                found.add(int(stat.parent.name))
    return found


def test_a_restarted_worker_shares_the_health_port_of_its_siblings(model_repo: Path,
                                                                    tls_flags: list[str]) -> None:
    """The port flags are checked once, by the parent: a worker's own check would find the
    health port held by its siblings, and stop every worker."""
    ports = _free_ports(("--port", "--health-port"))
    health = int(ports["--health-port"])
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--model-repo", str(model_repo), "--workers", "2",
         "--port", ports["--port"], "--metrics-port", "-1", "--health-port", str(health),
         *tls_flags], cwd=ROOT, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{health}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            stub.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=120)
            first = _children(process.pid)
            os.kill(min(first), signal.SIGKILL)
            while process.poll() is None and len(_children(process.pid) - first) < 1:
                time.sleep(0.1)
            assert process.poll() is None  # the supervisor kept serving
            stub.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=120)
        assert len(first) == 2 and len(_children(process.pid)) == 2
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
