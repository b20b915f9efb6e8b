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
import torch.nn.functional as F
from torch import nn

from export.onnx_export import export_module
from training.model import VAE


class _LogLikelihood(nn.Module):
    """z [N, latent], x [1, C, H, W] -> log p(x | z) [N] under the Bernoulli decoder.

    Written as x * logit - softplus(logit), not through the loss's BCE-with-logits: the
    exporter turns that into Log(Sigmoid(logit)), which ONNX Runtime rounds to log(0) = -inf
    for the saturated logits (below about -20) of every trained model's background pixels.
    """

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = self.model.decode(z)
        return (x * logits - F.softplus(logits)).flatten(1).sum(dim=1)


class OnnxLikelihood:
    """The model's decoder plus its log-likelihood, exported once and run by ONNX Runtime."""

    def __init__(self, model: VAE) -> None:
        model = model.cpu().eval()
        examples = (torch.randn(2, model.config.latent_dim),
                    torch.rand(1, *model.config.image_shape))
        with tempfile.TemporaryDirectory() as folder, torch.no_grad():
            path = Path(folder) / "log_likelihood.onnx"
            export_module(_LogLikelihood(model), examples, path, ["z", "x"], ["log_px_z"])
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])

    def __call__(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        """log p(x | z_i) for each row z_i; x is one image [1, C, H, W]."""
        (out,) = self.session.run(["log_px_z"], {"z": z, "x": x})
        return np.asarray(out)
