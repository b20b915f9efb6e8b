"""The real server on loopback: every RPC, bad inputs, batching equivalence, limits."""

import asyncio
import math
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message

from service.client.vae_client import VaeClient
from service.cores import usable_cores
from service.fronts.tensors import to_array, to_tensor
from service.transport.server import RunningServer
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import StartServer
from training.data import load_digits

IMAGES = load_digits().test[:16]


def tensor(shape: tuple[int, ...], fill: float = 0.5, nbytes: int | None = None) -> vae_pb2.Tensor:
    data = np.full(shape, fill, np.float32).tobytes()
    return vae_pb2.Tensor(shape=shape, data=data if nbytes is None else data[:nbytes])


async def test_encode_returns_mean_and_log_var(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    r = await stub.Encode(vae_pb2.EncodeRequest(images=to_tensor(IMAGES[:5])))
    assert list(r.mean.shape) == [5, 8] and list(r.log_var.shape) == [5, 8]
    assert np.isfinite(to_array(r.log_var)).all()


async def test_decode_returns_probabilities(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    latents = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    images = to_array((await stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(latents)))).images)
    assert images.shape == (3, 1, 8, 8) and 0 <= images.min() <= images.max() <= 1


async def test_sample_is_reproducible_by_seed_and_reports_a_picked_seed(
        stub: vae_pb2_grpc.VaeServiceStub) -> None:
    a = await stub.Sample(vae_pb2.SampleRequest(count=4, seed=7, temperature=0.8))
    b = await stub.Sample(vae_pb2.SampleRequest(count=4, seed=7, temperature=0.8))
    assert a.images.data == b.images.data and a.seed == 7
    picked = await stub.Sample(vae_pb2.SampleRequest(count=2))
    again = await stub.Sample(vae_pb2.SampleRequest(count=2, seed=picked.seed))
    assert picked.seed != 0 and picked.images.data == again.images.data


async def test_denoise_is_decode_of_the_posterior_mean(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    noisy = np.clip(IMAGES[:4] + 0.2 * np.random.default_rng(1).standard_normal(IMAGES[:4].shape),
                    0, 1).astype(np.float32)
    mean = (await stub.Encode(vae_pb2.EncodeRequest(images=to_tensor(noisy)))).mean
    expected = (await stub.Decode(vae_pb2.DecodeRequest(latents=mean))).images
    got = (await stub.Denoise(vae_pb2.DenoiseRequest(images=to_tensor(noisy)))).images
    assert got.data == expected.data


async def test_model_info(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    info = await stub.GetModelInfo(vae_pb2.GetModelInfoRequest())
    assert (list(info.image_shape), info.latent_dim, info.version) == ([1, 8, 8], 8, 1)
    assert info.execution_provider == "CPUExecutionProvider" and info.batching.max_batch_size == 64
    assert info.batching.instances == usable_cores()  # --instances auto on CPU


BAD = grpc.StatusCode.INVALID_ARGUMENT
BAD_REQUESTS = [
    ("Encode", vae_pb2.EncodeRequest(), "images: missing or empty tensor"),
    ("Encode", vae_pb2.EncodeRequest(images=tensor((2, 8, 8))), "does not match [N, 1, 8, 8]"),
    ("Encode", vae_pb2.EncodeRequest(images=tensor((1, 1, 28, 28))), "does not match"),
    ("Encode", vae_pb2.EncodeRequest(images=tensor((0, 1, 8, 8))), "empty batch"),
    ("Encode", vae_pb2.EncodeRequest(images=tensor((2, 1, 8, 8), nbytes=500)),
     "images: 500 bytes of data; shape [2, 1, 8, 8] float32 needs 512"),
    ("Encode", vae_pb2.EncodeRequest(images=tensor((1, 1, 8, 8), math.nan)), "item 0 contains NaN"),
    ("Encode", vae_pb2.EncodeRequest(images=tensor((1, 1, 8, 8), 1.5)), "outside [0, 1]"),
    ("Decode", vae_pb2.DecodeRequest(latents=tensor((2, 9))), "latents: shape [2, 9] does not match"),
    ("Decode", vae_pb2.DecodeRequest(latents=tensor((2, 8), math.inf)), "contains NaN or Inf"),
    ("Sample", vae_pb2.SampleRequest(count=0), "count: 0 is out of range"),
    ("Sample", vae_pb2.SampleRequest(count=2000), "ask for 1..1024"),
    ("Sample", vae_pb2.SampleRequest(count=1, temperature=-1), "temperature: -1.0 is invalid"),
    ("Sample", vae_pb2.SampleRequest(count=1, temperature=math.nan), "temperature: nan"),
    ("Sample", vae_pb2.SampleRequest(count=64, seed=77, temperature=1.5e38), "use a value in (0, 10]"),
    ("Decode", vae_pb2.DecodeRequest(latents=tensor((1, 8), 3e38)), "latents: item 0 gives non-finite"),
    ("Denoise", vae_pb2.DenoiseRequest(images=tensor((1, 1, 8, 8), -0.1)), "outside [0, 1]"),
]


@pytest.mark.parametrize(("method", "request_", "message"), BAD_REQUESTS)
async def test_bad_input_is_invalid_argument_with_an_actionable_message(
        stub: vae_pb2_grpc.VaeServiceStub, method: str, request_: Message, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, method)(request_)
    assert caught.value.code() == BAD and message in caught.value.details()


async def test_oversized_message_is_resource_exhausted(start_server: StartServer) -> None:
    running = await start_server(max_message_bytes=4096)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Encode(vae_pb2.EncodeRequest(images=tensor((64, 1, 8, 8))))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("model", ["vae", "vae-conv", "vae-subpixel"])
async def test_64_concurrent_mixed_requests_equal_single_calls(start_server: StartServer,
                                                               model: str) -> None:
    running = await start_server(model_name=model, max_batch_size=16)
    rng = np.random.default_rng(3)
    latents = [rng.standard_normal((int(n), 8)).astype(np.float32) for n in rng.integers(1, 20, 64)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)

        async def decode(z: np.ndarray) -> bytes:
            answer: vae_pb2.DecodeResponse = await stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(z)))
            return answer.images.data

        together = await asyncio.gather(*(decode(z) for z in latents))
        alone = [await decode(z) for z in latents]
    assert together == alone
    assert running.metrics.batch_rows.labels("decoder")._sum.get() >= sum(map(len, latents))


async def test_sample_does_not_depend_on_batch_company(start_server: StartServer) -> None:
    running = await start_server(max_queue_delay_us=50_000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        alone = await stub.Sample(vae_pb2.SampleRequest(count=3, seed=11))
        crowd = await asyncio.gather(*(stub.Sample(vae_pb2.SampleRequest(count=3, seed=s))
                                       for s in range(5, 15)))
    assert crowd[11 - 5].images.data == alone.images.data


async def test_queue_overflow_is_resource_exhausted_at_once(start_server: StartServer) -> None:
    running = await start_server(max_queue_rows=8, max_queue_delay_us=1_000_000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        first = asyncio.ensure_future(stub.Decode(vae_pb2.DecodeRequest(latents=tensor((5, 8)))))
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Decode(vae_pb2.DecodeRequest(latents=tensor((5, 8))), timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in caught.value.details()
        assert list((await first).images.shape) == [5, 1, 8, 8]


async def test_expired_requests_are_dropped_before_compute(start_server: StartServer) -> None:
    running = await start_server(max_queue_delay_us=500_000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Decode(vae_pb2.DecodeRequest(latents=tensor((2, 8))), timeout=0.1)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.6)
    assert running.metrics.batch_rows.labels("decoder")._sum.get() == 0
    assert running.metrics.queue_rows.labels("decoder")._value.get() == 0


def _client_round_trip(port: int) -> None:
    with VaeClient(f"127.0.0.1:{port}") as client:
        images, latents, seed = client.sample(4, seed=3)
        mean, _ = client.encode(images)
        assert images.shape == (4, 1, 8, 8) and latents.shape == mean.shape == (4, 8)
        assert seed == 3 and client.denoise(images).shape == images.shape


async def test_blocking_client_round_trip(server: RunningServer) -> None:
    await asyncio.to_thread(_client_round_trip, server.port)  # the server shares this loop


async def test_outputs_are_fetched_by_name_not_position(model_repo: Path, tmp_path: Path,
                                                        start_server: StartServer,
                                                        stub: vae_pb2_grpc.VaeServiceStub) -> None:
    import json
    import shutil

    import onnx

    from service.plane.repository import sha256_file

    repo = tmp_path / "models"
    folder = shutil.copytree(model_repo / "vae" / "1", repo / "vae" / "1")
    graph = onnx.load(folder / "encoder.onnx")
    outputs = list(graph.graph.output)
    del graph.graph.output[:]
    graph.graph.output.extend(reversed(outputs))  # log_var first, then mean
    onnx.save(graph, folder / "encoder.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"]["encoder.onnx"] = sha256_file(folder / "encoder.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    swapped = await start_server(model_repo=repo)
    images = vae_pb2.EncodeRequest(images=tensor((2, 1, 8, 8), 0.3))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{swapped.port}") as channel:
        answer = await vae_pb2_grpc.VaeServiceStub(channel).Encode(images)
    original = await stub.Encode(images)
    assert [o.name for o in onnx.load(folder / "encoder.onnx").graph.output] == ["log_var", "mean"]
    assert answer.mean.data == original.mean.data and answer.log_var.data == original.log_var.data
    assert answer.mean.data != answer.log_var.data


async def test_an_unparseable_body_is_invalid_argument_counted_and_not_logged(
        server: RunningServer, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture) -> None:
    for method in ("/vae.v1.VaeService/Decode", "/inference.GRPCInferenceService/ModelInfer"):
        call = channel.unary_unary(method)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\xff\xff\xff\xff not protobuf")
        assert caught.value.code() == BAD and "request body is not a valid" in caught.value.details()
    counted = server.metrics.registry.get_sample_value(
        "vae_requests_total", {"method": "Decode", "code": "INVALID_ARGUMENT"})
    assert counted == 1 and not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_calls_cut_at_their_deadline_count_as_deadline_exceeded(start_server: StartServer
                                                                      ) -> None:
    running = await start_server(max_queue_delay_us=200_000)  # rows wait past the deadline
    request = vae_pb2.DecodeRequest(latents=tensor((1, 8), 0.5))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        calls = [vae_pb2_grpc.VaeServiceStub(channel).Decode(request, timeout=0.02)
                 for _ in range(10)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    await asyncio.sleep(0.3)
    assert {o.code() for o in outcomes} == {grpc.StatusCode.DEADLINE_EXCEEDED}  # type: ignore[union-attr]
    counted = running.metrics.registry.get_sample_value(
        "vae_requests_total", {"method": "Decode", "code": "DEADLINE_EXCEEDED"})
    assert counted == 10
