"""log p(x | z) of many latents against one image, in ONNX Runtime: the inner loop of IWAE.

A k=5000 likelihood of the 10,000 MNIST test images is 50 million decoder passes. The decoder
and the Bernoulli log-likelihood are exported as one graph, so ONNX Runtime runs both, fused
and on every core, and only one number per latent comes back to Python.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.onnx_export import ScorerGraph, export_module
from training.model import VAE


class OnnxLikelihood:
    """The scorer graph with one image [1, C, H, W] against a batch of latents, exported once
    and run by ONNX Runtime (the served scorer.onnx batches the images too)."""

    def __init__(self, model: VAE) -> None:
        model = model.cpu().eval()
        examples = (torch.randn(2, model.config.latent_dim),
                    torch.rand(1, *model.config.image_shape))
        with tempfile.TemporaryDirectory() as folder, torch.no_grad():
            path = Path(folder) / "log_likelihood.onnx"
            export_module(ScorerGraph(model), examples, path, ["z", "x"], ["log_px_z"])
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])

    def __call__(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        """log p(x | z_i) for each row z_i; x is one image [1, C, H, W]."""
        (out,) = self.session.run(["log_px_z"], {"z": z, "x": x})
        return np.asarray(out)
