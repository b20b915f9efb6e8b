"""Trace the encoder and decoder into two ONNX graphs with a named, dynamic batch axis.

We use the torch.export-based ("dynamo") exporter, torch's supported path since 2.9: the
TorchScript exporter is deprecated and due for removal. For these feed-forward models it
emits plain graphs (Conv, Gemm, Relu, Sigmoid; no ONNX functions) with the batch axis
declared through torch.export's Dim, so it cannot be specialised away.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from training.model import VAE

OPSET = 18
BATCH_AXIS = "batch"
# The exporter warns about every torchvision op it cannot register; we use none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
# The optimiser's INFO lines (constant folding skipped, unused nodes removed) are not news.
for _name in ("onnxscript", "onnx_ir"):
    logging.getLogger(_name).setLevel(logging.WARNING)
TRACE_BATCH = 2
"""Trace with 2 rows: a batch of 1 can be constant-folded into the graph."""


class EncoderGraph(nn.Module):
    """x [N, C, H, W] in [0, 1] -> mean, log_var [N, latent]."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(x)


class DecoderGraph(nn.Module):
    """z [N, latent] -> x_hat [N, C, H, W]: probabilities, the sigmoid inside the graph."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model.decode(z))


def export_module(module: nn.Module, examples: tuple[torch.Tensor, ...], path: Path,
                  inputs: list[str], outputs: list[str], opset: int = OPSET) -> None:
    """Export `module` to `path`; the first input's axis 0 is the dynamic batch axis, any
    further inputs keep the shapes of their examples."""
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    dynamic: dict[str, dict[int, object] | None] = {name: None for name in inputs}
    dynamic[inputs[0]] = {0: batch}
    with warnings.catch_warnings():  # torch.export's own deprecation chatter, not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            module.eval(),
            examples,
            str(path),
            dynamo=True,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic,
            opset_version=opset,
            external_data=False,
            verbose=False,
        )


@torch.no_grad()
def export_graphs(model: VAE, folder: Path, opset: int = OPSET) -> tuple[Path, Path]:
    """Write encoder.onnx and decoder.onnx into `folder`; returns their paths."""
    model = model.cpu().eval()
    shape = model.config.image_shape
    encoder, decoder = folder / "encoder.onnx", folder / "decoder.onnx"
    export_module(EncoderGraph(model), (torch.rand(TRACE_BATCH, *shape),), encoder, ["x"],
                  ["mean", "log_var"], opset)
    export_module(DecoderGraph(model), (torch.randn(TRACE_BATCH, model.config.latent_dim),),
                  decoder, ["z"], ["x_hat"], opset)
    return encoder, decoder
