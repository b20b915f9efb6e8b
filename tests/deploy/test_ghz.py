"""ghz configs name real methods, stay bounded, and their payloads are accepted by the server."""

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from service.client import VaeClient
from service.vae.v1 import vae_pb2
from tests.conftest import ROOT

GHZ = ROOT / "deploy" / "ghz"
CONFIGS = sorted(GHZ.glob("*.json"))
SERVICE = vae_pb2.DESCRIPTOR.services_by_name["VaeService"]


def _load_maker():
    spec = importlib.util.spec_from_file_location("make_payloads", GHZ / "make_payloads.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_is_a_config_per_rpc() -> None:
    assert {json.loads(c.read_text())["call"].rsplit(".", 1)[1] for c in CONFIGS} == {
        "Encode", "Decode", "Sample", "Denoise"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_names_an_existing_method_and_is_bounded(config: Path) -> None:
    c = json.loads(config.read_text())
    service, _, method = c["call"].rpartition(".")
    assert service == SERVICE.full_name and method in SERVICE.methods_by_name
    assert c["connections"] > 1 and c["total"] > 0 and c["max-duration"]
    assert c["host"].startswith("127.0.0.1:")


def _send_all(port: int, payloads: Path) -> list[int]:
    counts = []
    with VaeClient(f"127.0.0.1:{port}") as client:
        for config in CONFIGS:
            c = json.loads(config.read_text())
            method = SERVICE.methods_by_name[c["call"].rpartition(".")[2]]
            request_type = getattr(vae_pb2, method.input_type.name)
            if c.get("binary"):
                request = request_type.FromString((payloads / Path(c["binary-file"]).name).read_bytes())
            else:
                request = request_type(**c["data"])
            response = getattr(client.stub, method.name)(request, timeout=10)
            counts.append(response.ListFields()[0][1].shape[0])
    return counts


async def test_payloads_from_real_images_pass_through_the_real_server(
        model_repo: Path, server, tmp_path: Path) -> None:
    _load_maker().write_payloads(model_repo, "vae", tmp_path)
    counts = await asyncio.to_thread(_send_all, server.port, tmp_path)
    assert counts == [8, 8, 8, 8]
