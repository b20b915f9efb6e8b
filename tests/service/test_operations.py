"""What operators rely on: metrics, health, reflection, refusing bad graphs (SIGTERM: test_drain.py)."""

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from service.fronts.tensors import to_tensor
from service.metrics import METRIC_NAMES
from service.plane.repository import IntegrityError
from service.transport.server import build_server
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import ROOT, StartServer, server_config


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_show_exactly_the_traffic_sent(start_server: StartServer) -> None:
    running = await start_server(metrics_port=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        for _ in range(3):
            await stub.Sample(vae_pb2.SampleRequest(count=4, seed=1))
        await stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(np.zeros((5, 8), np.float32))))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Sample(vae_pb2.SampleRequest(count=0))
    m = scrape(running.metrics_port)
    assert m[("vae_requests_total", (("code", "OK"), ("method", "Sample")))] == 3
    assert m[("vae_requests_total", (("code", "INVALID_ARGUMENT"), ("method", "Sample")))] == 1
    assert m[("vae_requests_total", (("code", "OK"), ("method", "Decode")))] == 1
    assert m[("vae_items_total", (("method", "Sample"),))] == 12
    assert m[("vae_request_duration_seconds_count", (("method", "Sample"),))] == 4
    assert m[("vae_batch_rows_sum", (("graph", "decoder"),))] == 17
    assert m[("vae_compute_duration_seconds_count", (("graph", "decoder"),))] == 4
    assert m[("vae_queue_duration_seconds_count", (("graph", "decoder"),))] == 4
    assert m[("vae_queue_rows", (("graph", "decoder"),))] == 0
    assert m[("vae_inflight_requests", ())] == 0
    assert m[("vae_model_info", (("provider", "CPUExecutionProvider"), ("version", "1")))] == 1
    exported = {name.removesuffix(s) for name, _ in m for s in ("_total", "_count", "_sum",
                                                                "_bucket", "_created")}
    tls_only = {"vae_tls_certificate_expiry_timestamp_seconds", "vae_tls_reloads_total"}
    assert set(METRIC_NAMES) <= exported | tls_only | {"vae_requests_total", "vae_items_total",
                                                       "vae_model_loads_total"}


async def test_health_serves_overall_and_per_service(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "vae.v1.VaeService", "inference.GRPCInferenceService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def _reflect(channel: grpc.aio.Channel, **query: str) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**query)]))
    async for response in responses:
        return response
    raise AssertionError("no reflection response")


async def test_reflection_lists_services_and_resolves_method_symbols(channel: grpc.aio.Channel
                                                                     ) -> None:
    listed = await _reflect(channel, list_services="")
    names = {s.name for s in listed.list_services_response.service}
    assert {"vae.v1.VaeService", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    for symbol in ("vae.v1.VaeService.Sample", "vae.v1.VaeService", "vae.v1.SampleRequest",
                   "inference.GRPCInferenceService.ModelInfer", "inference.ModelConfig"):
        found = await _reflect(channel, file_containing_symbol=symbol)
        assert found.HasField("file_descriptor_response"), symbol
    missing = await _reflect(channel, file_containing_symbol="vae.v1.VaeService.Nope")
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_tampered_graph_is_refused_at_start(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(model_repo / "vae", repo / "vae")
    graph = repo / "vae" / "1" / "encoder.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match=r"encoder.onnx: sha256 [0-9a-f]{64} does not match"):
        await build_server(server_config(repo))
    cli = subprocess.run([sys.executable, "-m", "service.cli", "--model-repo", str(repo),
                          "--port", "0", "--metrics-port", "-1"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert cli.returncode == 2 and "does not match the manifest" in cli.stderr



def test_generated_modules_match_the_proto(tmp_path: Path) -> None:
    from service.proto_gen import GENERATED, generate

    written = generate(tmp_path)
    assert {path.relative_to(tmp_path).as_posix() for path in written} == set(GENERATED)
    assert {"vae/v1/vae.binpb", "inference/inference.binpb"} <= set(GENERATED)
    for name in GENERATED:
        fresh = (tmp_path / name).read_bytes()
        assert fresh == (ROOT / "service" / name).read_bytes(), (
            f"service/{name} is stale: run make proto")


@pytest.mark.gpu
async def test_cuda_path_matches_cpu(start_server: StartServer) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDAExecutionProvider in this onnxruntime (CPU-only machine)")
    cpu, cuda = await start_server(device="cpu"), await start_server(device="cuda")
    results = []
    for running in (cpu, cuda):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            info = await stub.GetModelInfo(vae_pb2.GetModelInfoRequest())
            sample = await stub.Sample(vae_pb2.SampleRequest(count=16, seed=3))
            results.append((info.execution_provider, np.frombuffer(sample.images.data, "<f4")))
    assert results[1][0] == "CUDAExecutionProvider"
    assert np.max(np.abs(results[0][1] - results[1][1])) <= 1e-5


def test_device_cuda_without_a_gpu_is_a_startup_error(model_repo: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the refusal is for CPU-only machines")
    cli = subprocess.run([sys.executable, "-m", "service.cli", "--model-repo", str(model_repo),
                          "--device", "cuda", "--port", "0", "--metrics-port", "-1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cli.returncode == 2 and "no CUDAExecutionProvider" in cli.stderr
