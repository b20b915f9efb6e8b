"""Hostile requests on both fronts: each ends with a precise status and message, never INTERNAL,
a big allocation or an uncounted call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message

from service.fronts.tensors import to_tensor
from service.inference import grpc_service_pb2 as pb
from service.inference import grpc_service_pb2_grpc as pb_grpc
from service.plane.repository import parse_canonical_version
from service.transport.server import RunningServer, build_server
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import StartServer, server_config, spawn_server
from tests.service.test_repository_control import ADMIN, CONTROL

Tensor = pb.ModelInferRequest.InferInputTensor
Output = pb.ModelInferRequest.InferRequestedOutputTensor
Contents = pb.InferTensorContents
Param = pb.ModelRepositoryParameter


def _infer(model: str = "vae.decoder", inputs: tuple[Tensor, ...] = (), raw: tuple[bytes, ...] = (),
           outputs: tuple[str, ...] = (), version: str = "") -> tuple[str, Message]:
    return "v2.ModelInfer", pb.ModelInferRequest(
        model_name=model, model_version=version, inputs=inputs, raw_input_contents=raw,
        outputs=[Output(name=name) for name in outputs])


def _z(shape: list[int], datatype: str = "FP32", **contents: Any) -> Tensor:
    return Tensor(name="z", datatype=datatype, shape=shape, contents=Contents(**contents))


def _count(value: int = 4) -> Tensor:
    return Tensor(name="count", datatype="INT64", shape=[1], contents=Contents(int64_contents=[value]))


def _load(**parameters: Param) -> tuple[str, Message]:
    return "v2.RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="vae",
                                                                   parameters=parameters)


def _config(versions: str) -> tuple[str, Message]:
    policy = f'{{"version_policy": {{"specific": {{"versions": {versions}}}}}}}'
    return _load(config=Param(string_param=policy))


def _v1(method: str, **fields: Any) -> tuple[str, Message]:
    request = {"Decode": vae_pb2.DecodeRequest, "Denoise": vae_pb2.DenoiseRequest,
               "Encode": vae_pb2.EncodeRequest}[method]
    return f"v1.{method}", request(**fields)


ONE_Z = bytes(4 * 8)
HUGE = [0, 2**62, 2**62]
NOT_A_VERSION = "is not a version number; write one in ASCII digits"
CASES: dict[str, tuple[tuple[str, Message], str]] = {
    # Repeated or surplus names: refused before any work, in time linear in the request.
    "1500 outputs named x_hat": (_infer(inputs=(_z([1, 8]),), raw=(ONE_Z,), outputs=("x_hat",) * 1500),
                                 "1500 outputs requested; vae.decoder gives 1: x_hat"),
    "an output named twice": (_infer("vae.encoder", outputs=("mean", "mean")),
                              "output 'mean' is named twice"),
    "an input named twice": (_infer("vae.sample", inputs=(_count(), _count())),
                             "input 'count' is named twice"),
    "two inputs for one": (_infer(inputs=(_z([1, 8]), _z([1, 8])), raw=(ONE_Z, ONE_Z)),
                           "2 inputs; vae.decoder takes at most 1: z"),
    "45,000 empty inputs": (_infer(inputs=(Tensor(),) * 45_000), "45000 inputs; vae.decoder takes"),
    "an input with no name": (_infer(inputs=(Tensor(),)), "input '' is unknown; vae.decoder takes z"),
    "an input name of 1 MB": (_infer(inputs=(Tensor(name="z" * 2**20),)),
                              "input 'zzzzzzzzzzzzzzzzzzzz'... (1048576 characters) is unknown"),
    "an output name of 1 MB": (_infer(outputs=("y" * 2**20,)), "(1048576 characters) is unknown"),
    "raw mixed with typed": (_infer(inputs=(_z([1, 8], fp32_contents=[0.0] * 8),), raw=(ONE_Z,)),
                             "has contents (fp32_contents) besides raw_input_contents"),
    "contents of another type": (_infer(inputs=(_z([1, 8], int64_contents=[0] * 8),)),
                                 "contents has int64_contents; datatype FP32 takes fp32_contents"),
    # Shapes and datatypes numpy or the model cannot take.
    "65 dimensions": (_infer(inputs=(_z([1] * 65),), raw=(bytes(4),)),
                      "input 'z': shape has 65 dimensions; send 1 to 64"),
    "[0, 2**62, 2**62]": (_infer(inputs=(_z(HUGE),), raw=(b"",)), "is impossibly large"),
    "[0, 2**62, 2**62] typed": (_infer(inputs=(_z(HUGE),)), "is impossibly large"),
    "a negative dimension": (_infer(inputs=(_z([-1, 8]),)), "shape [-1, 8] has a negative dimension"),
    "BYTES": (_infer(inputs=(_z([1, 8], "BYTES"),)), "datatype BYTES; vae.decoder takes FP32"),
    "BOOL": (_infer(inputs=(_z([1, 8], "BOOL"),)), "datatype BOOL; vae.decoder takes FP32"),
    "FP16": (_infer(inputs=(_z([1, 8], "FP16"),)), "datatype FP16; vae.decoder takes FP32"),
    "count 2**62": (_infer("vae.sample", inputs=(_count(2**62),)), "count: 4611686018427387904 is out"),
    # Versions: only the canonical ASCII decimal spelling exists.
    "version ²": (_infer(version="²"), f"model_version '²' {NOT_A_VERSION}"),
    "version \u0661 (Arabic one)": (_infer(version="\u0661"), f"model_version '\u0661' {NOT_A_VERSION}"),
    "version 01": (_infer(version="01"), f"model_version '01' {NOT_A_VERSION}"),
    "version of 5,000 digits": (_infer(version="9" * 5000), "... (5000 characters) is not a version"),
    "version 2**32": (_infer(version=str(2**32)), NOT_A_VERSION),
    "ModelReady version ²": (("v2.ModelReady", pb.ModelReadyRequest(name="vae.decoder", version="²")),
                             NOT_A_VERSION),
    "ModelMetadata version 01": (("v2.ModelMetadata", pb.ModelMetadataRequest(
        name="vae.decoder", version="01")), NOT_A_VERSION),
    "ModelConfig version of 5,000 digits": (("v2.ModelConfig", pb.ModelConfigRequest(
        name="vae.decoder", version="9" * 5000)), NOT_A_VERSION),
    "load version ²": (_load(version=Param(string_param="²")), NOT_A_VERSION),
    "load version bool": (_load(version=Param(bool_param=True)), "parameter version: bool_param"),
    "load config versions null": (_config("null"), "config.version_policy.specific.versions is null"),
    "load config versions 5": (_config("5"), "config.version_policy.specific.versions is 5"),
    "load config versions object": (_config("{}"), "config.version_policy.specific.versions is {}"),
    "load config versions [²]": (_config('["²"]'), NOT_A_VERSION),
    "load config versions [1.5]": (_config("[1.5]"), "version 1.5 is not a version number"),
    "load config nested 100,000 deep": (_load(config=Param(string_param="[" * 100_000)),
                                        "parameter config: not a JSON model config"),
    "load config policy null": (_load(config=Param(string_param='{"version_policy": null}')),
                                "config.version_policy is null, not an object"),
    # The same shapes on vae.v1.
    "v1 Decode 65 dimensions": (_v1("Decode", latents=vae_pb2.Tensor(shape=[1] * 65, data=bytes(4))),
                                "latents: shape has 65 dimensions"),
    "v1 Decode [0, 2**62, 2**62]": (_v1("Decode", latents=vae_pb2.Tensor(shape=HUGE)),
                                    "latents: shape [0, 4611686018427387904, 4611686018427387904] "
                                    "is impossibly large"),
    "v1 Denoise [0, 2**62, 2**62]": (_v1("Denoise", images=vae_pb2.Tensor(shape=HUGE)),
                                     "images: shape [0, 4611686018427387904"),
    "v1 Encode [2**40, 2**40]": (_v1("Encode", images=vae_pb2.Tensor(shape=[2**40, 2**40])),
                                 "images: shape [1099511627776, 1099511627776] is impossibly large"),
}


@pytest.fixture(scope="module")
async def hostile_server(model_repo: Path) -> AsyncIterator[RunningServer]:
    running = await build_server(server_config(model_repo, **CONTROL))  # Load parses versions
    yield running
    await running.stop(1.0)


async def _call(running: RunningServer, call: tuple[str, Message]) -> grpc.aio.AioRpcError:
    front, method = call[0].split(".")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = (pb_grpc.GRPCInferenceServiceStub if front == "v2" else vae_pb2_grpc.VaeServiceStub)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(stub(channel), method)(call[1], timeout=30, metadata=ADMIN)
    return caught.value


@pytest.mark.parametrize("case", CASES)
async def test_hostile_request_is_invalid_argument_with_a_message(hostile_server: RunningServer,
                                                                  case: str) -> None:
    call, message = CASES[case]
    error = await _call(hostile_server, call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert message in (error.details() or "")


@pytest.mark.parametrize(("text", "version"), [
    ("1", 1), ("42", 42), (str(2**32 - 1), 2**32 - 1), ("", None), ("0", None), ("01", None),
    ("²", None), ("\u0661", None), ("-1", None), ("+1", None), (" 1", None), ("1.0", None),
    (str(2**32), None), ("9" * 5000, None)])
def test_only_the_canonical_spelling_is_a_version(text: str, version: int | None) -> None:
    assert parse_canonical_version(text) == version


def _rss_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field)))


async def test_1500_repeated_output_names_cost_no_memory(model_repo: Path) -> None:
    proc, port = await spawn_server(model_repo, poll_interval_s="0")
    hostile = pb.ModelInferRequest(model_name="vae.sample", inputs=[_count(1024)],
                                   outputs=[Output(name="x_hat")] * 1500)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await stub.ModelInfer(pb.ModelInferRequest(model_name="vae.sample", inputs=[_count(1024)]),
                                  wait_for_ready=True, timeout=60)  # warm: the same work, once
            before_kib = _rss_kib(proc.pid, "VmHWM")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ModelInfer(hostile, timeout=60)
        grown_kib = _rss_kib(proc.pid, "VmHWM") - before_kib
    finally:
        proc.terminate()
        await proc.wait()
    print(f"peak RSS grew by {grown_kib / 1024:.1f} MiB")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1500 outputs requested; vae.sample gives 3" in (caught.value.details() or "")
    assert grown_kib < 50 * 1024, f"peak RSS grew by {grown_kib / 1024:.0f} MiB"


async def test_calls_are_counted_with_the_code_and_items_the_client_saw(start_server: StartServer) -> None:
    running = await start_server(max_message_bytes=200_000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        v2, v1 = pb_grpc.GRPCInferenceServiceStub(channel), vae_pb2_grpc.VaeServiceStub(channel)
        seed_only = await v2.ModelInfer(pb.ModelInferRequest(
            model_name="vae.sample", inputs=[_count(5)], outputs=[Output(name="seed")]))
        with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
            await v2.ModelStatistics(pb.ModelStatisticsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as too_large:  # 1024 x (64 + 8) float32 > 200 kB
            await v1.Sample(vae_pb2.SampleRequest(count=1024))
        latents = np.zeros((8000, 8), np.float32)  # 256 kB > 200 kB: refused by grpc itself
        with pytest.raises(grpc.aio.AioRpcError) as oversize:
            await v1.Decode(vae_pb2.DecodeRequest(latents=to_tensor(latents)))
    assert list(seed_only.outputs[0].shape) == [1]
    assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert too_large.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over this server's message limit of 200000" in (too_large.value.details() or "")
    value = running.metrics.registry.get_sample_value
    assert value("vae_items_total", {"method": "ModelInfer"}) == 5
    assert value("vae_requests_total", {"method": "ModelStatistics", "code": "UNIMPLEMENTED"}) == 1
    assert value("vae_requests_total", {"method": "Sample", "code": "RESOURCE_EXHAUSTED"}) == 1
    assert value("vae_requests_total", {"method": "Sample", "code": "OK"}) is None
    assert value("vae_items_total", {"method": "Sample"}) is None
    assert oversize.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert value("vae_requests_total", {"method": "Decode", "code": "RESOURCE_EXHAUSTED"}) == 1



async def test_a_1_mb_model_name_is_not_found_with_a_short_message(hostile_server: RunningServer
                                                                   ) -> None:
    error = await _call(hostile_server, ("v2.ModelInfer", pb.ModelInferRequest(model_name="m" * 2**20)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no model named 'mmmmmmmmmmmmmmmmmmmm'... (1048576 characters)" in (error.details() or "")
