"""Prove a pair of graphs right before anyone serves them: checker, load, parity, shapes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.onnx_export import BATCH_AXIS
from training.model import VAE

PARITY_BATCH_SIZES = (1, 3, 64)
PARITY_TOLERANCE = 1e-5
"""Max abs error allowed between ONNX Runtime (CPU) and torch for mean, log_var and x_hat."""


class VerificationError(Exception):
    """A graph that must not be published; the message names the graph and the failure."""


def _signature(values: Sequence[onnx.ValueInfoProto]) -> dict[str, list[int | str]]:
    return {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values
    }


def check_graph(path: Path, inputs: dict[str, Sequence[int]],
                outputs: dict[str, Sequence[int]]) -> None:
    """Full ONNX checker, then exact tensor names and shapes: [batch, *fixed], float32 only."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise VerificationError(f"{path.name}: fails the ONNX checker: {err}") from err
    graph = onnx.load(str(path)).graph
    expected = {name: [BATCH_AXIS, *tail] for name, tail in {**inputs, **outputs}.items()}
    actual = {**_signature(graph.input), **_signature(graph.output)}
    if actual != expected:
        raise VerificationError(f"{path.name}: tensors {actual}, expected {expected}")
    float32 = onnx.TensorProto.FLOAT
    if any(v.type.tensor_type.elem_type != float32 for v in [*graph.input, *graph.output]):
        raise VerificationError(f"{path.name}: every input and output must be float32")


def cpu_session(path: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own unexported exception types
        raise VerificationError(f"{path.name}: ONNX Runtime cannot load it: {err}") from err


@torch.no_grad()
def parity_errors(model: VAE, encoder: Path, decoder: Path, images: np.ndarray,
                  latents: np.ndarray) -> dict[str, float]:
    """Max abs difference ORT vs torch per output, over PARITY_BATCH_SIZES."""
    model = model.cpu().eval()
    enc, dec = cpu_session(encoder), cpu_session(decoder)
    errors = {"mean": 0.0, "log_var": 0.0, "x_hat": 0.0}
    for n in PARITY_BATCH_SIZES:
        x, z = images[:n], latents[:n]
        if len(x) < n or len(z) < n:
            raise VerificationError(f"parity needs {n} images and latents, got {len(x)}")
        mean, log_var = model.encode(torch.from_numpy(x))
        ort_mean, ort_log_var = enc.run(["mean", "log_var"], {"x": x})
        x_hat = torch.sigmoid(model.decode(torch.from_numpy(z))).numpy()
        (ort_x_hat,) = dec.run(["x_hat"], {"z": z})
        for name, ours, theirs in (("mean", mean.numpy(), ort_mean),
                                   ("log_var", log_var.numpy(), ort_log_var),
                                   ("x_hat", x_hat, ort_x_hat)):
            errors[name] = max(errors[name], float(np.max(np.abs(ours - theirs))))
    return errors


def require_parity(errors: dict[str, float], tolerance: float = PARITY_TOLERANCE) -> None:
    worst = {k: v for k, v in errors.items() if not v <= tolerance}
    if worst:
        details = ", ".join(f"{k} {v:.3g}" for k, v in worst.items())
        raise VerificationError(f"parity with torch above {tolerance:g}: {details}; "
                                "not published")


def smoke_run(encoder: Path, decoder: Path, image_shape: tuple[int, ...], latent_dim: int,
              batch: int = 3) -> None:
    """Run both graphs on a small batch and check the stated shapes and value ranges."""
    x = np.random.default_rng(0).random((batch, *image_shape), dtype=np.float32)
    mean, log_var = cpu_session(encoder).run(["mean", "log_var"], {"x": x})
    (x_hat,) = cpu_session(decoder).run(["x_hat"], {"z": mean})
    checks = [
        (mean.shape == (batch, latent_dim), f"encoder mean has shape {mean.shape}"),
        (log_var.shape == (batch, latent_dim), f"encoder log_var has shape {log_var.shape}"),
        (x_hat.shape == (batch, *image_shape), f"decoder x_hat has shape {x_hat.shape}"),
        (bool(np.all((x_hat >= 0) & (x_hat <= 1))), "decoder x_hat leaves [0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise VerificationError(f"{message}; the manifest states image {list(image_shape)}, "
                                    f"latent {latent_dim}")
