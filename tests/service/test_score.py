"""Score: per-image bounds in nats, equal to vae-train's, deterministic, batched, refused precisely."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from service.fronts.tensors import to_array, to_tensor
from service.operations.score import MAX_SCORE_ROWS
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import StartServer, server_config
from tests.service.test_operations import scrape


def _digits(count: int) -> np.ndarray:
    from training.data import load_digits

    return np.ascontiguousarray(load_digits().test[:count])


async def _score(stub: vae_pb2_grpc.VaeServiceStub, images: np.ndarray, samples: int,
                 seed: int = 7) -> dict[str, np.ndarray]:
    out = await stub.Score(vae_pb2.ScoreRequest(images=to_tensor(images), samples=samples,
                                                seed=seed))
    return {name: to_array(getattr(out, name)) for name in ("neg_elbo", "reconstruction", "kl",
                                                            "nll")}


@pytest.mark.parametrize("samples", [1, 50])
async def test_scores_equal_vae_train_per_image_numbers(stub: vae_pb2_grpc.VaeServiceStub,
                                                        digits_run: Path, samples: int) -> None:
    from training.evaluate import score_images
    from training.run_dir import load_run

    images = _digits(12)
    served = await _score(stub, images, samples)
    trained = score_images(load_run(digits_run).model, images, samples, seed=7)
    for name, values in served.items():
        np.testing.assert_allclose(values, trained[name], rtol=1e-4, atol=1e-3, err_msg=name)
    np.testing.assert_allclose(served["neg_elbo"], served["reconstruction"] + served["kl"],
                               rtol=1e-6)


async def test_iwae_tightens_the_elbo_and_one_sample_per_image_is_enough_to_rank(
        stub: vae_pb2_grpc.VaeServiceStub) -> None:
    scores = await _score(stub, _digits(20), 200)
    assert scores["nll"].mean() < scores["neg_elbo"].mean()
    assert np.all(np.isfinite(scores["nll"])) and np.all(scores["kl"] >= 0)


async def test_same_seed_same_scores_whatever_else_shares_the_batch(
        stub: vae_pb2_grpc.VaeServiceStub) -> None:
    images = _digits(6)
    alone = await _score(stub, images, 20)
    crowd = await asyncio.gather(_score(stub, images, 20),
                                 *(_score(stub, _digits(9)[3:], 30, seed) for seed in range(8)))
    for name, values in alone.items():
        assert values.tobytes() == crowd[0][name].tobytes(), name


async def test_a_thousand_samples_of_one_image_are_one_scorer_run(start_server: StartServer
                                                                  ) -> None:
    running = await start_server(metrics_port=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        await _score(vae_pb2_grpc.VaeServiceStub(channel), _digits(1), 1000)
    metrics = scrape(running.metrics_port)
    assert metrics[("vae_batch_rows_count", (("graph", "scorer"),))] == 1
    assert metrics[("vae_batch_rows_sum", (("graph", "scorer"),))] == 1000


@pytest.mark.parametrize(("images", "samples", "message"), [
    (1, 1001, "samples: 1001 is out of range; ask for 1..1000"),
    (100, 1000, f"100 images x 1000 samples = 100000 importance rows; one request may ask for "
                f"{MAX_SCORE_ROWS}"),
])
async def test_out_of_range_samples_are_refused(stub: vae_pb2_grpc.VaeServiceStub, images: int,
                                                samples: int, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _score(stub, _digits(images), samples)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(err.value.details())


async def test_a_wrong_shape_is_refused(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _score(stub, np.zeros((2, 1, 7, 8), np.float32), 1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images: shape [2, 1, 7, 8] does not match [N, 1, 8, 8]" in str(err.value.details())


async def test_a_version_without_the_scorer_serves_all_but_score(model_repo: Path,
                                                                 tmp_path: Path) -> None:
    from service.transport.server import build_server

    folder = shutil.copytree(model_repo / "vae" / "1", tmp_path / "old" / "vae" / "1")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "scorer.onnx").unlink()
    manifest.update(schema_version=1, inputs={"encoder": "x", "decoder": "z"},
                    outputs={g: n for g, n in manifest["outputs"].items() if g != "scorer"},
                    sha256={f: h for f, h in manifest["sha256"].items() if f != "scorer.onnx"})
    manifest["parity"].pop("log_px_z", None)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    running = await build_server(server_config(tmp_path / "old"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            info = await stub.GetModelInfo(vae_pb2.GetModelInfoRequest())
            await stub.Denoise(vae_pb2.DenoiseRequest(images=to_tensor(_digits(2))))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _score(stub, _digits(2), 1)
    finally:
        await running.stop(1.0)
    assert "score" not in info.operations and "denoise" in info.operations
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has no scorer graph" in str(err.value.details())
    assert "re-export" in str(err.value.details())
