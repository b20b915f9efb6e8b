"""Trace the encoder, decoder and scorer into ONNX graphs with a named, dynamic batch axis.

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
import torch.nn.functional as F
from torch import nn

from service.plane.repository import GRAPHS
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


class ScorerGraph(nn.Module):
    """z [N, latent], x [N, C, H, W] -> log p(x | z) [N] under the Bernoulli decoder.

    Written as x * logits - softplus(logits), not through the loss's BCE-with-logits: the
    exporter turns that into Log(Sigmoid(logits)), which ONNX Runtime rounds to log(0) = -inf
    for the saturated logits (below about -20) of every trained model's background pixels.
    x may also be one image [1, C, H, W] scored against every z (broadcast).
    """

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = self.model.decode(z)
        return (x * logits - F.softplus(logits)).flatten(1).sum(dim=1)


def export_module(module: nn.Module, examples: tuple[torch.Tensor, ...], path: Path,
                  inputs: list[str], outputs: list[str], opset: int = OPSET,
                  batched: int = 1) -> None:
    """Export `module` to `path`; the first `batched` inputs share one dynamic batch axis 0,
    any further inputs keep the shapes of their examples."""
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    dynamic: dict[str, dict[int, object] | None] = {
        name: {0: batch} if i < batched else None for i, name in enumerate(inputs)}
    with warnings.catch_warnings():  # torch.export's own deprecation chatter, not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        # Inputs sharing the batch Dim: the exporter says it names the axis once, which we want.
        warnings.filterwarnings("ignore", ".*The axis name: .* will not be used", UserWarning)
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
def export_graphs(model: VAE, folder: Path, opset: int = OPSET) -> dict[str, Path]:
    """Write every graph of the repository's contract into `folder`; graph -> its path."""
    model = model.cpu().eval()
    x = torch.rand(TRACE_BATCH, *model.config.image_shape)
    z = torch.randn(TRACE_BATCH, model.config.latent_dim)
    modules: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]] = {
        "encoder": (EncoderGraph(model), (x,)), "decoder": (DecoderGraph(model), (z,)),
        "scorer": (ScorerGraph(model), (z, x))}
    paths = {}
    for graph, (module, examples) in modules.items():
        spec = GRAPHS[graph]
        paths[graph] = folder / spec.file
        export_module(module, examples, paths[graph], list(spec.inputs), list(spec.outputs),
                      opset, batched=len(spec.inputs))
    return paths
