"""What an operation is: typed tensors in and out, the graphs it needs, and how it runs.

An `Operation` is data the fronts read: the KServe v2 front serves each as a model named
`<model>.<operation>` with metadata and config derived from it, and vae.v1 adapts its typed
RPC to it in a few lines. Shapes are written in the manifest's terms (BATCH, IMAGE, LATENT),
so one declaration fits every model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.config import ServerConfig
from service.context import RequestContext
from service.errors import InvalidInput

if TYPE_CHECKING:
    from service.plane.repository import Manifest
    from service.plane.version import ModelVersion

BATCH = "batch"
"""Any number of rows, N >= 1 (-1 in v2 metadata)."""
IMAGE = "image"
"""The manifest's image shape, C, H, W."""
LATENT = "latent"
"""The manifest's latent_dim."""
Dim = int | str

Inputs = Mapping[str, Any]
"""Declared input name -> ndarray (or, from vae.v1, a Python scalar); absent when not sent."""
Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str = "FP32"
    """KServe v2 datatype: FP32, INT64, UINT64 or BOOL."""
    dims: tuple[Dim, ...] = (1,)
    optional: bool = False
    unit_range: bool = False
    """Values in [0, 1] (images)."""

    def shape(self, manifest: Manifest) -> tuple[int, ...]:
        """The dims in numbers for one model: BATCH is -1."""
        shape: list[int] = []
        for dim in self.dims:
            if dim == IMAGE:
                shape.extend(manifest.image_shape)
            elif dim == LATENT:
                shape.append(manifest.latent_dim)
            else:
                shape.append(-1 if dim == BATCH else int(dim))
        return tuple(shape)


Run = Callable[["ModelVersion", Inputs, RequestContext, ServerConfig], Awaitable[Outputs]]


@dataclass(frozen=True)
class Operation:
    """One thing the server does; the data plane runs it under one version lease."""

    name: str
    """The v2 model is `<model name>.<name>`."""
    summary: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    """The first output has one row per item: it is what vae_items_total counts."""
    graphs: tuple[str, ...]
    """Graphs a version must hold to run it; one that lacks any answers FAILED_PRECONDITION."""
    run: Run
    batched: bool = False
    """Every input and output leads with the batch axis (v2 ModelConfig max_batch_size > 0)."""
    blame: str = ""
    """The input an error names when an output comes out non-finite; "" = the first input."""
    one_of: tuple[str, ...] = ()
    """Optional inputs of which a request sends exactly one."""

    @property
    def blamed_input(self) -> str:
        return self.blame or self.inputs[0].name


def scalar(inputs: Inputs, name: str, default: float) -> float:
    """A scalar input as a Python number: vae.v1 passes numbers, v2 one-value arrays."""
    value = inputs.get(name)
    if value is None:
        return default
    if not isinstance(value, np.ndarray):
        return value  # type: ignore[no-any-return]
    if value.size != 1:
        raise InvalidInput(f"input {name!r}: shape {list(value.shape)}; send one value, shape [1]")
    return value.reshape(-1)[0].item()  # type: ignore[no-any-return]
