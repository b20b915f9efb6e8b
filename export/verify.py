"""Prove a version's graphs right before anyone serves them: checker, load, parity, shapes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.onnx_export import BATCH_AXIS, DecoderGraph, EncoderGraph, ScorerGraph
from service.plane.repository import GRAPHS
from training.model import VAE

PARITY_BATCH_SIZES = (1, 3, 64)
PARITY_TOLERANCE = 1e-5
"""Max abs error allowed between ONNX Runtime (CPU) and torch for mean, log_var and x_hat."""
SCORER_TOLERANCE = 1e-3
"""Max abs error allowed for log_px_z: a sum over every pixel of some -100s of nats in
float32, where one unit in the last place of the sum is already about 1e-5."""
TOLERANCES = {"mean": PARITY_TOLERANCE, "log_var": PARITY_TOLERANCE, "x_hat": PARITY_TOLERANCE,
              "log_px_z": SCORER_TOLERANCE}
"""Output -> its parity tolerance."""


class VerificationError(Exception):
    """A graph that must not be published; the message names the graph and the failure."""


def _signature(values: Sequence[onnx.ValueInfoProto]) -> dict[str, list[int | str]]:
    return {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values
    }


def check_graph(path: Path, inputs: Mapping[str, Sequence[int]],
                outputs: Mapping[str, Sequence[int]]) -> None:
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
def parity_errors(model: VAE, graphs: dict[str, Path], images: np.ndarray,
                  latents: np.ndarray) -> dict[str, float]:
    """Max abs difference ORT vs torch per output of the given graphs, over PARITY_BATCH_SIZES."""
    model = model.cpu().eval()
    sessions = {graph: cpu_session(path) for graph, path in graphs.items()}
    modules = {"encoder": EncoderGraph(model), "decoder": DecoderGraph(model),
               "scorer": ScorerGraph(model)}
    errors: dict[str, float] = {}
    for n in PARITY_BATCH_SIZES:
        x, z = images[:n], latents[:n]
        if len(x) < n or len(z) < n:
            raise VerificationError(f"parity needs {n} images and latents, got {len(x)}")
        feeds = {"x": x, "z": z}
        for graph, session in sessions.items():
            spec = GRAPHS[graph]
            ours = modules[graph](*(torch.from_numpy(feeds[name]) for name in spec.inputs))
            ours = ours if isinstance(ours, tuple) else (ours,)
            theirs = session.run(list(spec.outputs), {name: feeds[name] for name in spec.inputs})
            for name, a, b in zip(spec.outputs, ours, theirs, strict=True):
                errors[name] = max(errors.get(name, 0.0), float(np.max(np.abs(a.numpy() - b))))
    return errors


def require_parity(errors: dict[str, float]) -> None:
    worst = {k: v for k, v in errors.items() if not v <= TOLERANCES[k]}
    if worst:
        details = ", ".join(f"{k} {v:.3g} (tolerance {TOLERANCES[k]:g})" for k, v in worst.items())
        raise VerificationError(f"parity with torch above tolerance: {details}; not published")


def smoke_run(folder: Path, graphs: tuple[str, ...], image_shape: tuple[int, ...],
              latent_dim: int, batch: int = 3) -> None:
    """Run each graph on a small batch and check the stated shapes and value ranges."""
    x = np.random.default_rng(0).random((batch, *image_shape), dtype=np.float32)
    session = {graph: cpu_session(folder / GRAPHS[graph].file) for graph in graphs}
    mean, log_var = session["encoder"].run(["mean", "log_var"], {"x": x})
    (x_hat,) = session["decoder"].run(["x_hat"], {"z": mean})
    checks = [
        (mean.shape == (batch, latent_dim), f"encoder mean has shape {mean.shape}"),
        (log_var.shape == (batch, latent_dim), f"encoder log_var has shape {log_var.shape}"),
        (x_hat.shape == (batch, *image_shape), f"decoder x_hat has shape {x_hat.shape}"),
        (bool(np.all((x_hat >= 0) & (x_hat <= 1))), "decoder x_hat leaves [0, 1]"),
    ]
    if "scorer" in session:  # saturated logits too: log p(x | z) stays finite and <= 0
        (log_px_z,) = session["scorer"].run(["log_px_z"], {"z": 10 * mean, "x": x})
        checks += [(log_px_z.shape == (batch,), f"scorer log_px_z has shape {log_px_z.shape}"),
                   (bool(np.all(np.isfinite(log_px_z) & (log_px_z <= 0))),
                    f"scorer log_px_z {log_px_z.tolist()} is not finite and <= 0")]
    for ok, message in checks:
        if not ok:
            raise VerificationError(f"{message}; the manifest states image {list(image_shape)}, "
                                    f"latent {latent_dim}")
