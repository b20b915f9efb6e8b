"""README.md can be followed: its commands run as written, in order, in a copy of the project.

Each ```sh block runs in bash; `make serve` starts in the background and is stopped when the
next one starts or the walk ends. The only change to a command is the server address: the
walk serves on a free port (VAE_SERVE_PORT, VAE_CLIENT_TARGET, and 127.0.0.1:50051 in the
lines of grpcurl, ghz and Python replaced by it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import ROOT, SHARED_TOOLS, data_dir, free_port

README = (ROOT / "README.md").read_text()
MNIST_SECTION = "## MNIST end to end"
NOT_WALKED = {
    "make test": "the walk is part of make test",
    "make install PIP_ARGS=": "download.pytorch.org is outside the package registries CI reaches",
}
SERVE_START_S = 600


def _blocks(section: str | None) -> list[tuple[str, str]]:
    """(language, code) of each fenced block, within `section` or outside the MNIST section."""
    parts = re.split(r"^(## .*)$", README, flags=re.M)
    chosen, heading = [], ""
    for part in parts:
        if part.startswith("## "):
            heading = part.strip()
            continue
        if (heading == section) if section else heading != MNIST_SECTION:
            chosen += re.findall(r"```([a-z]*)\n(.*?)```", part, flags=re.S)
    return chosen


def test_ci_runs_exactly_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_commands_are_runnable_blocks() -> None:
    """Every command block is marked sh (walked) or text (a picture), never left unmarked."""
    languages = {language for language, _ in _blocks(None) + _blocks(MNIST_SECTION)}
    assert languages <= {"sh", "python", "text"} and "sh" in languages



@dataclass
class Walk:
    """A copy of the project and the environment its README commands run in."""

    folder: Path
    port: int = field(default_factory=free_port)
    serving: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        tools = f"{SHARED_TOOLS}{os.pathsep}" if SHARED_TOOLS.is_dir() else ""
        return {**os.environ, "VAE_SERVE_PORT": str(self.port),
                "VAE_SERVE_METRICS_PORT": str(free_port()),
                "VAE_CLIENT_TARGET": f"127.0.0.1:{self.port}",
                "PATH": tools + os.environ["PATH"], **self.extra_env}

    def command(self, line: str) -> str:
        return line.replace("127.0.0.1:50051", f"127.0.0.1:{self.port}")

    def run(self, language: str, code: str) -> None:
        if language == "python":
            self._check(["bash", "-c", ".venv/bin/python -"], code)
            return
        script: list[str] = []
        for line in re.sub(r"\\\n\s*", "", code).splitlines():
            words = line.split("#")[0].strip()
            if not words:
                continue
            if any(words.startswith(prefix) for prefix in NOT_WALKED):
                continue
            if words.startswith("make serve"):
                self._flush(script)
                self.serve(words)
            elif words.split()[0] in ("grpcurl", "ghz", "protoc") and not self._has(words.split()[0]):
                self.not_run.append(words)
            else:
                script.append(self.command(line))
        self._flush(script)

    def _has(self, tool: str) -> bool:
        return shutil.which(tool, path=self.env["PATH"]) is not None

    def _flush(self, script: list[str]) -> None:
        if script:
            self._check(["bash", "-euo", "pipefail", "-c", "\n".join(script)], None)
            script.clear()

    def _check(self, argv: list[str], stdin: str | None) -> None:
        done = subprocess.run(argv, input=None if stdin is None else self.command(stdin),
                              cwd=self.folder, env=self.env, capture_output=True, text=True,
                              timeout=900)
        self.log.append(done.stdout + done.stderr)
        assert done.returncode == 0, f"{argv[-1]!r} exit {done.returncode}:\n{done.stdout}\n{done.stderr}"

    def serve(self, line: str) -> None:
        self.stop()
        self.serving = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=self.folder,
                                        env=self.env, start_new_session=True)
        deadline = time.monotonic() + SERVE_START_S
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.serving.poll() is None, f"{line!r} exited {self.serving.returncode}"
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                except grpc.RpcError:
                    time.sleep(1)
        raise AssertionError(f"{line!r} did not serve within {SERVE_START_S} s")

    def stop(self) -> None:
        if self.serving is not None:
            os.killpg(self.serving.pid, signal.SIGINT)
            assert self.serving.wait(timeout=60) in (0, 2, -signal.SIGINT)
            self.serving = None


@pytest.fixture
def walk(tmp_path: Path) -> Iterator[Walk]:
    """A copy of the project's files (mtimes kept, so make sees .venv as up to date)."""
    stamp = ROOT / ".venv" / ".installed-stamp"
    assert stamp.is_file(), "run make install first"
    assert all(stamp.stat().st_mtime >= (ROOT / name).stat().st_mtime
               for name in ("pyproject.toml", "constraints.txt")), "run make install first"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folder = tmp_path / "project"
    for name in listed.splitlines():
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    (folder / ".venv").symlink_to(ROOT / ".venv")
    running = Walk(folder)
    yield running
    running.stop()


def test_readme_walks_from_install_to_calls(walk: Walk) -> None:
    for language, code in _blocks(None):
        if language != "text":
            walk.run(language, code)
    assert (walk.folder / "models" / "vae" / "1" / "manifest.json").is_file()
    psnr = json.loads((walk.folder / "runs" / "digits-mlp" / "metrics.json").read_text())[
        "evaluation"]["psnr"]["gaussian:0.2"]
    assert psnr["vae"] > max(psnr["noisy"], psnr["pca"]) + 1, "the quick-start model must denoise"
    assert {"grid.png", "noisy.png", "clean.png", "codes.npz", "scores.csv", "extremes.png",
            "strip.png"} <= {p.name for p in walk.folder.iterdir()}
    assert any("(4, 1, 8, 8) from version 1" in out for out in walk.log), "tritonclient's recipe"
    if "protoc" not in " ".join(walk.not_run):
        assert (walk.folder / "vae" / "v1" / "vae_grpc.pb.go").is_file(), "the Go line"
    if walk.not_run:
        pytest.skip(f"every other README command ran; no grpcurl/ghz for: {walk.not_run}")


@pytest.mark.mnist
def test_readme_mnist_path_serves_an_mnist_model(walk: Walk) -> None:
    mnist = data_dir("mnist")
    if not mnist.is_dir():
        pytest.skip(f"no MNIST IDX files in {mnist}")
    (walk.folder / "data").mkdir(exist_ok=True)
    if not (walk.folder / "data" / "mnist").exists():
        (walk.folder / "data" / "mnist").symlink_to(mnist)
    # One epoch, not ten: the same commands and code path in a minute instead of ten
    # (docs/benchmarks.md has the ten-epoch numbers).
    walk.extra_env["MNIST_EPOCHS"] = "1"
    for language, code in _blocks(MNIST_SECTION):
        walk.run(language, code)
    assert (walk.folder / "models" / "mnist" / "1" / "manifest.json").is_file()
    assert (walk.folder / "mnist-clean.png").is_file()
    assert (walk.folder / "mnist-compare.png").is_file()
