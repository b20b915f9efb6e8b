"""ghz configs do what they say when the real ghz runs them; the README's grpcurl lines answer.

ghz and grpcurl are looked up on PATH, then in the shared tools folder; without them those
tests skip with the reason, and the payloads still go through the server by the Python client.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from service.client.vae_client import VaeClient
from service.transport.server import RunningServer
from service.vae.v1 import vae_pb2
from tests.conftest import ROOT, SHARED_TOOLS

GHZ = ROOT / "deploy" / "ghz"
CONFIGS = sorted(GHZ.glob("*.json"))
SERVICE = vae_pb2.DESCRIPTOR.services_by_name["VaeService"]
GHZ_KEYS = frozenset({
    "proto", "protoset", "call", "cacert", "cert", "key", "count-errors", "skipTLS", "skipFirst",
    "cname", "authority", "insecure", "total", "async", "concurrency", "concurrency-schedule",
    "concurrency-start", "concurrency-end", "concurrency-step", "concurrency-step-duration",
    "concurrency-max-duration", "connections", "rps", "duration", "duration-stop", "max-duration",
    "timeout", "data", "data-file", "binary-file", "metadata", "metadata-file", "stream-interval",
    "stream-call-duration", "stream-call-count", "stream-dynamic-messages", "output", "format",
    "connect-timeout", "keepalive", "cpus", "import-paths", "name", "tags", "reflect-metadata", "debug",
    "host", "enable-compression", "load-schedule", "load-start", "load-end", "load-step",
    "load-step-duration", "load-max-duration", "lb-strategy", "max-recv-message-size",
    "max-send-message-size", "disable-template-functions", "disable-template-data"
})
"""The keys ghz v0.121.0 reads from a config (runner/config.go); it ignores any other key."""
TIME_BOUNDS = {"duration", "max-duration"}
TEST_TOTAL = 500
DEPLOY_DOC = (ROOT / "docs" / "deploy.md").read_text()
README = (ROOT / "README.md").read_text()
README_ANSWERS = {
    "list": ("vae.v1.VaeService", "inference.GRPCInferenceService", "grpc.health.v1.Health"),
    "vae.v1.VaeService/Sample": ('"images"', '"latents"', '"seed": "7"'),
    "grpc.health.v1.Health/Check": ('"status": "SERVING"',),
    "vae.v1.VaeService/Denoise": ('"images"', '"shape"'),
}
"""What each README grpcurl line (by its last word) must print."""


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(SHARED_TOOLS))
    if found is None:
        pytest.skip(f"no {name} on PATH or in {SHARED_TOOLS}")
    return found


def _load_maker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_payloads", GHZ / "make_payloads.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ghz_section() -> str:
    return DEPLOY_DOC.split("## Load test with ghz", 1)[1].split("\n## ", 1)[0]


def test_there_is_a_config_per_rpc() -> None:
    assert {json.loads(c.read_text())["call"].rsplit(".", 1)[1] for c in CONFIGS} == {
        "Encode", "Decode", "Sample", "Denoise", "Score", "Interpolate"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_is_bounded_by_total_in_keys_ghz_reads(config: Path) -> None:
    c = json.loads(config.read_text())
    service, _, method = c["call"].rpartition(".")
    assert service == SERVICE.full_name and method in SERVICE.methods_by_name
    assert set(c) <= GHZ_KEYS, f"ghz ignores {sorted(set(c) - GHZ_KEYS)}"
    assert not set(c) & TIME_BOUNDS, "with a duration set, ghz ignores total"
    assert c["total"] > 0 and c["connections"] > 1 and c["host"].startswith("127.0.0.1:")
    assert ("binary-file" in c) != ("data" in c)
    assert c.get("binary-file", f"deploy/ghz/payloads/{config.stem}.bin") == (
        f"deploy/ghz/payloads/{config.stem}.bin"), "payload paths are relative to the repository root"


def test_the_documented_invocation_runs_from_the_repository_root() -> None:
    code = "".join(re.findall(r"```[a-z]*\n(.*?)```", _ghz_section(), flags=re.S))
    configs = re.findall(r"\bghz --config (\S+)", code)
    assert configs and len(configs) == len(re.findall(r"\bghz ", code)) and "cd " not in code
    shipped = {str(c.relative_to(ROOT)) for c in CONFIGS} | {"deploy/ghz/$rpc.json"}
    assert set(configs) <= shipped, f"not a path from the repository root: {set(configs) - shipped}"


@pytest.fixture(scope="module")
def project(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as the repository root: the shipped configs, payloads for the test model."""
    root = tmp_path_factory.mktemp("project")
    (root / "deploy" / "ghz").mkdir(parents=True)
    for config in CONFIGS:
        (root / "deploy" / "ghz" / config.name).symlink_to(config)
    _load_maker().write_payloads(model_repo, "vae", root / "deploy" / "ghz" / "payloads")
    return root


async def _ghz(project: Path, config: Path, port: int) -> dict[str, Any]:
    argv = [_tool("ghz"), "--config", str(config.relative_to(ROOT)),  # as docs/deploy.md says
            "--total", str(TEST_TOTAL), "-O", "json", f"127.0.0.1:{port}"]
    done = await asyncio.to_thread(subprocess.run, argv, cwd=project, capture_output=True,
                                   text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
async def test_ghz_runs_the_config_with_every_call_ok(
        config: Path, project: Path, server: RunningServer) -> None:
    report = await _ghz(project, config, server.port)
    shipped, options = json.loads(config.read_text()), report["options"]
    assert (report["endReason"], report["count"], report["statusCodeDistribution"]) == (
        "normal", TEST_TOTAL, {"OK": TEST_TOTAL}), report["errorDistribution"]
    assert {k: options[k] for k in ("call", "concurrency", "connections")} == {
        k: shipped[k] for k in ("call", "concurrency", "connections")}
    assert options["binary"] == ("binary-file" in shipped)


def _send_all(port: int, payloads: Path) -> list[int]:
    counts, maker = [], _load_maker()
    with VaeClient(f"127.0.0.1:{port}") as client:
        for config in CONFIGS:
            c = json.loads(config.read_text())
            method = SERVICE.methods_by_name[c["call"].rpartition(".")[2]]
            request_type = getattr(vae_pb2, method.input_type.name)
            if "binary-file" in c:
                payload = (payloads / Path(c["binary-file"]).name).read_bytes()
                request = request_type.FromString(maker.message_bytes(payload))
            else:
                request = request_type(**c["data"])
            response = getattr(client.stub, method.name)(request, timeout=10)
            counts.append(response.ListFields()[0][1].shape[0])
    return counts


async def test_payloads_from_real_images_pass_through_the_real_server(
        project: Path, server: RunningServer) -> None:
    counts = await asyncio.to_thread(_send_all, server.port, project / "deploy" / "ghz" / "payloads")
    assert counts == [8] * len(CONFIGS)  # 8 images, latents, draws, scores or frames each


def test_a_payload_is_one_length_delimited_message() -> None:
    """ghz reads a bare message as delimited ones when its bytes allow; a prefixed one never."""
    maker = _load_maker()
    for count in (1, 127, 128, 300, 20_000):  # one- to three-byte varints
        message = vae_pb2.DecodeRequest(latents=vae_pb2.Tensor(shape=[count], data=bytes(4 * count)))
        blob, body = maker.delimited(message), message.SerializeToString()
        assert vae_pb2.DecodeRequest.FromString(maker.message_bytes(blob)) == message
        assert len(blob) - len(body) == -(-len(body).bit_length() // 7)  # the varint's bytes


def _readme_grpcurl_scripts() -> list[str]:
    """Each README grpcurl line, after the shell assignments before it in its sh block."""
    scripts = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S):
        assignments: list[str] = []
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            if line.startswith("grpcurl "):
                scripts.append("\n".join([*assignments, line]))
            elif re.match(r"[A-Za-z_]\w*=", line):
                assignments.append(line)
    return scripts


README_GRPCURL = _readme_grpcurl_scripts()


def test_every_readme_grpcurl_line_has_a_known_answer() -> None:
    assert sorted(script.split()[-1] for script in README_GRPCURL) == sorted(README_ANSWERS)


@pytest.mark.parametrize("script", README_GRPCURL, ids=lambda s: s.split()[-1])
async def test_readme_grpcurl_line_answers(script: str, server: RunningServer) -> None:
    grpcurl = _tool("grpcurl")
    env = {**os.environ, "PATH": f"{Path(grpcurl).parent}{os.pathsep}{os.environ['PATH']}"}
    argv = ["bash", "-euo", "pipefail", "-c", script.replace("127.0.0.1:50051", f"127.0.0.1:{server.port}")]
    done = await asyncio.to_thread(subprocess.run, argv, cwd=ROOT, env=env, capture_output=True,
                                   text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(word in done.stdout for word in README_ANSWERS[script.split()[-1]]), done.stdout
