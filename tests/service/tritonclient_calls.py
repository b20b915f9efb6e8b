"""Calls a server with the real tritonclient, in a process of its own.

tritonclient registers its own copy of the `inference` protos, which would clash with the
server's in one interpreter; a client is another process in real life anyway.

python -m tests.service.tritonclient_calls PORT MODEL INPUTS.npz OUT_DIR
writes OUT_DIR/results.json (metadata, configs, errors) and OUT_DIR/outputs.npz.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

OPERATIONS = ("encoder", "decoder", "sample", "denoise", "score", "interpolate")
"""Every v2 model the server offers for one repository model."""


def _input(name: str, array: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _error(call: Any) -> list[str]:
    try:
        call()
    except InferenceServerException as err:
        return [str(err.status()), str(err.message())]
    return ["OK", ""]


def _basics(client: triton.InferenceServerClient, model: str, results: dict[str, Any]) -> None:
    results["live"], results["ready"] = client.is_server_live(), client.is_server_ready()
    results["server"] = client.get_server_metadata(as_json=True)
    names = [f"{model}.{op}" for op in OPERATIONS]
    results["model_ready"] = {n: client.is_model_ready(n) for n in names}
    results["metadata"] = {n: client.get_model_metadata(n, as_json=True) for n in names}
    results["config"] = {n: client.get_model_config(n, as_json=True)["config"] for n in names}
    results["index"] = client.get_model_repository_index(as_json=True)


def _infer(client: triton.InferenceServerClient, model: str, x: np.ndarray, z: np.ndarray,
           outputs: dict[str, np.ndarray], results: dict[str, Any]) -> None:
    encoded = client.infer(f"{model}.encoder", [_input("x", x)], request_id="enc-1")
    outputs["mean"], outputs["log_var"] = encoded.as_numpy("mean"), encoded.as_numpy("log_var")
    results["encoder_response"] = encoded.get_response(as_json=True)
    outputs["decoded"] = client.infer(f"{model}.decoder", [_input("z", z)]).as_numpy("x_hat")
    outputs["denoised"] = client.infer(f"{model}.denoise", [_input("x", x)]).as_numpy("x_hat")
    sample = client.infer(f"{model}.sample", [
        _input("count", np.array([3], np.int64), "INT64"),
        _input("seed", np.array([11], np.uint64), "UINT64")])
    outputs["sampled"], outputs["sample_z"] = sample.as_numpy("x_hat"), sample.as_numpy("z")
    only_mean = client.infer(f"{model}.encoder", [_input("x", x)],
                             outputs=[triton.InferRequestedOutput("log_var")])
    results["subset_outputs"] = [o["name"] for o in only_mean.get_response(as_json=True)["outputs"]]


def _scalar(name: str, value: int | bool, datatype: str) -> triton.InferInput:
    dtype = {"INT64": np.int64, "UINT64": np.uint64, "BOOL": np.bool_}[datatype]
    return _input(name, np.array([value], dtype), datatype)


def _score_and_interpolate(client: triton.InferenceServerClient, model: str, x: np.ndarray,
                           z: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    """vae.score (4 samples, seed 5) of x; vae.interpolate from x[:2] (linear) and z[:2] (slerp)."""
    score = client.infer(f"{model}.score", [_input("x", x), _scalar("samples", 4, "INT64"),
                                            _scalar("seed", 5, "UINT64")])
    for name in ("neg_elbo", "reconstruction", "kl", "nll", "seed"):
        outputs[f"score_{name}"] = score.as_numpy(name)
    from_x = client.infer(f"{model}.interpolate", [_input("x", x[:2]), _scalar("steps", 5, "INT64")])
    outputs["interpolated_x"], outputs["interpolated_x_z"] = from_x.as_numpy("x_hat"), from_x.as_numpy("z")
    from_z = client.infer(f"{model}.interpolate", [
        _input("z", z[:2]), _scalar("steps", 4, "INT64"), _scalar("spherical", True, "BOOL")])
    outputs["interpolated_z"], outputs["interpolated_z_z"] = from_z.as_numpy("x_hat"), from_z.as_numpy("z")


async def _concurrent(port: int, model: str, zs: np.ndarray) -> np.ndarray:
    async with triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as client:
        answers = await asyncio.gather(*(
            client.infer(f"{model}.decoder", [_input("z", zs[i:i + 1])]) for i in range(len(zs))))
    return np.concatenate([a.as_numpy("x_hat") for a in answers])


ADMIN = {"x-vae-admin": "s3cret"}
"""The repository-control header the test server is started with (tests/service/test_v2.py)."""


def _errors(client: triton.InferenceServerClient, model: str, x: np.ndarray,
            z: np.ndarray) -> dict[str, list[str]]:
    encoder, score, interpolate = f"{model}.encoder", f"{model}.score", f"{model}.interpolate"
    steps = _scalar("steps", 5, "INT64")
    return {
        "unknown_model": _error(lambda: client.infer("nope", [_input("x", x)])),
        "unknown_version": _error(lambda: client.infer(encoder, [_input("x", x)], model_version="99")),
        "wrong_datatype": _error(lambda: client.infer(encoder, [_input("x", x.astype(np.float64), "FP64")])),
        "wrong_shape": _error(lambda: client.infer(encoder, [_input("x", x[:, :, :4])])),
        "unknown_input": _error(lambda: client.infer(encoder, [_input("y", x)])),
        "nan": _error(lambda: client.infer(encoder, [_input("x", np.full_like(x, np.nan))])),
        "unload": _error(lambda: client.unload_model(model, headers=ADMIN)),
        "load_missing": _error(lambda: client.load_model(
            model, config=json.dumps({"version_policy": {"specific": {"versions": [99]}}}),
            headers=ADMIN)),
        "load_newest": _error(lambda: client.load_model(model, headers=ADMIN)),
        "load_without_header": _error(lambda: client.load_model(model)),
        "statistics": _error(lambda: client.get_inference_statistics(encoder)),
        "score_samples": _error(lambda: client.infer(score, [
            _input("x", x), _scalar("samples", 10**6, "INT64")])),
        "score_shape": _error(lambda: client.infer(score, [_input("x", x[:, :, :4])])),
        "interpolate_steps": _error(lambda: client.infer(interpolate, [
            _input("z", z[:2]), _scalar("steps", 1, "INT64")])),
        "interpolate_both_ends": _error(lambda: client.infer(interpolate, [
            _input("x", x[:2]), _input("z", z[:2]), steps])),
        "interpolate_no_end": _error(lambda: client.infer(interpolate, [steps])),
        "interpolate_three_codes": _error(lambda: client.infer(interpolate, [
            _input("z", z[:3]), steps])),
    }


def main(port: int, model: str, inputs: Path, out: Path) -> None:
    data = np.load(inputs)
    results: dict[str, Any] = {}
    outputs: dict[str, np.ndarray] = {}
    with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
        _basics(client, model, results)
        _infer(client, model, data["x"], data["z"], outputs, results)
        _score_and_interpolate(client, model, data["x"], data["z"], outputs)
        results["errors"] = _errors(client, model, data["x"], data["z"])
    outputs["concurrent"] = asyncio.run(_concurrent(port, model, data["zs"]))
    (out / "results.json").write_text(json.dumps(results, default=str))
    np.savez(out / "outputs.npz", allow_pickle=False, **outputs)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
