"""The KServe v2 front, called by the real tritonclient: same answers as vae.v1, same errors."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from service.config import HeaderCredential
from service.fronts.tensors import to_array, to_tensor
from service.inference import grpc_service_pb2 as pb
from service.inference import grpc_service_pb2_grpc as pb_grpc
from service.transport.server import RunningServer, build_server
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import ROOT, StartServer, server_config


@dataclass
class TritonRun:
    server: RunningServer
    inputs: dict[str, np.ndarray]
    results: dict[str, Any]
    outputs: dict[str, np.ndarray]


@pytest.fixture(scope="module")
async def triton_run(model_repo: Path, tmp_path_factory: pytest.TempPathFactory
                     ) -> AsyncIterator[TritonRun]:
    """One server; tritonclient's calls made once in their own process, their answers kept."""
    from training.data import load_digits

    folder = tmp_path_factory.mktemp("triton")
    rng = np.random.default_rng(4)
    inputs = {"x": np.ascontiguousarray(load_digits().test[:3]),
              "z": rng.standard_normal((3, 8)).astype(np.float32),
              "zs": rng.standard_normal((64, 8)).astype(np.float32)}
    np.savez(folder / "inputs.npz", allow_pickle=False, **inputs)
    credential = HeaderCredential("x-vae-admin", "s3cret")  # as tritonclient_calls.ADMIN
    running = await build_server(server_config(model_repo, max_batch_size=16,
                                               repository_control=True,
                                               repository_control_header=credential))
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.service.tritonclient_calls", str(running.port), "vae",
        str(folder / "inputs.npz"), str(folder), cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(client.communicate(), 180)
    assert client.returncode == 0, stderr.decode()
    results = json.loads((folder / "results.json").read_text())
    yield TritonRun(running, inputs, results, dict(np.load(folder / "outputs.npz")))
    await running.stop(1.0)


async def _v1(run: TritonRun) -> vae_pb2_grpc.VaeServiceStub:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{run.server.port}")
    return vae_pb2_grpc.VaeServiceStub(channel)


def test_health_and_metadata(triton_run: TritonRun) -> None:
    r = triton_run.results
    assert r["live"] and r["ready"] and all(r["model_ready"].values())
    assert r["server"]["name"] == "vae-serve" and "model_repository" in r["server"]["extensions"]
    encoder = r["metadata"]["vae.encoder"]
    assert encoder["versions"] == ["1"]
    assert encoder["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    assert [o["name"] for o in encoder["outputs"]] == ["mean", "log_var"]


def test_model_config_has_what_perf_analyzer_reads(triton_run: TritonRun) -> None:
    decoder = triton_run.results["config"]["vae.decoder"]
    assert decoder["max_batch_size"] == 16
    assert decoder["input"][0]["dims"] == ["8"] and decoder["output"][0]["dims"] == ["1", "8", "8"]
    assert not decoder.get("model_transaction_policy", {}).get("decoupled", False)
    assert triton_run.results["config"]["vae.sample"].get("max_batch_size", 0) == 0


async def test_infer_equals_vae_v1_byte_for_byte(triton_run: TritonRun) -> None:
    stub, x, z = await _v1(triton_run), triton_run.inputs["x"], triton_run.inputs["z"]
    out = triton_run.outputs
    encoded = await stub.Encode(vae_pb2.EncodeRequest(images=to_tensor(x)))
    assert out["mean"].tobytes() == to_array(encoded.mean).tobytes()
    assert out["log_var"].tobytes() == to_array(encoded.log_var).tobytes()
    decoded = await stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(z)))
    assert out["decoded"].tobytes() == to_array(decoded.images).tobytes()
    denoised = await stub.Denoise(vae_pb2.DenoiseRequest(images=to_tensor(x)))
    assert out["denoised"].tobytes() == to_array(denoised.images).tobytes()
    sampled = await stub.Sample(vae_pb2.SampleRequest(count=3, seed=11))
    assert out["sampled"].tobytes() == to_array(sampled.images).tobytes()


def test_score_and_interpolate_metadata_name_their_tensors(triton_run: TritonRun) -> None:
    score, line = (triton_run.results["metadata"][f"vae.{op}"] for op in ("score", "interpolate"))
    assert [(i["name"], i["datatype"], i["shape"]) for i in score["inputs"]] == [
        ("x", "FP32", ["-1", "1", "8", "8"]), ("samples", "INT64", ["1"]), ("seed", "UINT64", ["1"])]
    assert [o["name"] for o in score["outputs"]] == ["neg_elbo", "reconstruction", "kl", "nll", "seed"]
    assert [(i["name"], i["shape"]) for i in line["inputs"]] == [
        ("x", ["2", "1", "8", "8"]), ("z", ["2", "8"]), ("steps", ["1"]), ("spherical", ["1"])]
    assert [(o["name"], o["shape"]) for o in line["outputs"]] == [
        ("x_hat", ["-1", "1", "8", "8"]), ("z", ["-1", "8"])]


async def test_score_and_interpolate_equal_vae_v1_byte_for_byte(triton_run: TritonRun) -> None:
    stub, x, z = await _v1(triton_run), triton_run.inputs["x"], triton_run.inputs["z"]
    out = triton_run.outputs
    scored = await stub.Score(vae_pb2.ScoreRequest(images=to_tensor(x), samples=4, seed=5))
    for name in ("neg_elbo", "reconstruction", "kl", "nll"):
        assert out[f"score_{name}"].tobytes() == to_array(getattr(scored, name)).tobytes()
    assert out["score_seed"].tolist() == [scored.seed] == [5]
    for key, request in (("interpolated_x", vae_pb2.InterpolateRequest(
            images=to_tensor(x[:2]), steps=5)), ("interpolated_z", vae_pb2.InterpolateRequest(
            latents=to_tensor(z[:2]), steps=4, path=vae_pb2.INTERPOLATION_PATH_SPHERICAL))):
        line = await stub.Interpolate(request)
        assert out[key].tobytes() == to_array(line.images).tobytes()
        assert out[f"{key}_z"].tobytes() == to_array(line.latents).tobytes()


async def test_64_concurrent_async_infer_equal_single_calls(triton_run: TritonRun) -> None:
    stub, zs = await _v1(triton_run), triton_run.inputs["zs"]
    alone = await stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(zs)))
    assert triton_run.outputs["concurrent"].tobytes() == to_array(alone.images).tobytes()


def test_response_echoes_id_names_version_and_honours_the_output_subset(triton_run: TritonRun
                                                                        ) -> None:
    response = triton_run.results["encoder_response"]
    assert response["id"] == "enc-1" and response["model_version"] == "1"
    assert triton_run.results["subset_outputs"] == ["log_var"]


@pytest.mark.parametrize(("case", "code", "message"), [
    ("unknown_model", "NOT_FOUND", "no model named 'nope'"),
    ("unknown_version", "NOT_FOUND", "version 99"),
    ("wrong_datatype", "INVALID_ARGUMENT", "input 'x': datatype FP64; vae.encoder takes FP32"),
    ("wrong_shape", "INVALID_ARGUMENT", "x: shape [3, 1, 4, 8] does not match [N, 1, 8, 8]"),
    ("unknown_input", "INVALID_ARGUMENT", "input 'y' is unknown; vae.encoder takes x"),
    ("nan", "INVALID_ARGUMENT", "x: item 0 contains NaN or Inf"),
    ("unload", "FAILED_PRECONDITION", "only model this server serves"),
    ("load_missing", "NOT_FOUND", "has no version 99"),
    ("load_newest", "OK", ""),
    ("load_without_header", "UNAUTHENTICATED", "send the metadata header 'x-vae-admin'"),
    ("statistics", "UNIMPLEMENTED", "does not implement ModelStatistics"),
    ("score_samples", "INVALID_ARGUMENT", "samples: 1000000 is out of range"),
    ("score_shape", "INVALID_ARGUMENT", "x: shape [3, 1, 4, 8] does not match [N, 1, 8, 8]"),
    ("interpolate_steps", "INVALID_ARGUMENT", "steps: 1 is out of range"),
    ("interpolate_both_ends", "INVALID_ARGUMENT", "send exactly one of x or z; got x, z"),
    ("interpolate_no_end", "INVALID_ARGUMENT", "send exactly one of x or z; got none"),
    ("interpolate_three_codes", "INVALID_ARGUMENT", "z: 3 items; interpolate takes exactly 2"),
])
def test_errors_have_codes_and_messages(triton_run: TritonRun, case: str, code: str,
                                        message: str) -> None:
    status, text = triton_run.results["errors"][case]
    assert status.endswith(code) and message in text


async def test_typed_contents_share_a_batch_with_vae_v1(start_server: StartServer,
                                                        triton_run: TritonRun) -> None:
    running = await start_server(max_queue_delay_us=300_000)
    z = triton_run.inputs["z"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        v2, v1 = pb_grpc.GRPCInferenceServiceStub(channel), vae_pb2_grpc.VaeServiceStub(channel)
        tensor = pb.ModelInferRequest.InferInputTensor(name="z", datatype="FP32", shape=z.shape)
        tensor.contents.fp32_contents.extend(z.reshape(-1).tolist())
        typed, plain = await asyncio.gather(
            v2.ModelInfer(pb.ModelInferRequest(model_name="vae.decoder", inputs=[tensor])),
            v1.Decode(vae_pb2.DecodeRequest(latents=to_tensor(z))))
    assert typed.raw_output_contents[0] == plain.images.data and typed.model_version == "1"
    batches = running.metrics.registry.get_sample_value("vae_batch_rows_count", {"graph": "decoder"})
    assert batches == 1  # both fronts' rows ran in one ONNX Runtime call
