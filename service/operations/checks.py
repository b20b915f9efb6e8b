"""Checks of decoded inputs against the manifest of the version that serves the request.

Front-agnostic: every front decodes its wire format to ndarrays, then calls these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from service.context import RequestContext
from service.errors import InvalidInput
from service.operations.spec import Inputs, Operation
from service.plane.repository import Manifest

MAX_DIMS = 64
"""numpy's limit on an array's dimensions; every tensor the server takes has at most 4."""
MAX_ARRAY_BYTES = 2**63 - 1
"""numpy refuses a shape over this even when a zero dimension leaves it empty."""


def check_wire_shape(dims: Sequence[int], field: str, itemsize: int) -> tuple[int, ...]:
    """A received shape numpy can hold: 1..MAX_DIMS dimensions, none negative, and its
    non-zero dimensions multiply to at most MAX_ARRAY_BYTES; checked before any allocation."""
    if not 0 < len(dims) <= MAX_DIMS:
        raise InvalidInput(f"{field}: shape has {len(dims)} dimensions; send 1 to {MAX_DIMS} "
                           "(a batch is [N, ...])")
    shape = tuple(dims)  # protobuf's repeated int64: Python ints already
    if min(shape) < 0:
        raise InvalidInput(f"{field}: shape {list(shape)} has a negative dimension")
    if (math.prod(shape) or math.prod(v for v in shape if v)) * itemsize > MAX_ARRAY_BYTES:
        raise InvalidInput(f"{field}: shape {list(shape)} is impossibly large (over 2**63 "
                           "bytes without its zero dimensions); send the shape of the data")
    return shape


def check_batch(array: np.ndarray, field: str, item_shape: tuple[int, ...], unit_range: bool
                ) -> np.ndarray:
    """A batch [N >= 1, *item_shape] of finite float32 values (in [0, 1] for images)."""
    if array.ndim != len(item_shape) + 1 or array.shape[1:] != item_shape:
        expected = "[N, " + ", ".join(str(v) for v in item_shape) + "]"
        raise InvalidInput(f"{field}: shape {list(array.shape)} does not match {expected}")
    if array.shape[0] < 1:
        raise InvalidInput(f"{field}: empty batch (N = {array.shape[0]}); send at least one item")
    if unit_range:  # NaN and Inf show in these two
        if float(array.min()) >= 0 and float(array.max()) <= 1:
            return array  # the common case: two reductions, no boolean arrays
    elif np.isfinite(array).all():
        return array  # the common case: faster than min and max at 1 row and at 64
    finite = np.isfinite(array)
    if not finite.all():
        item = int(np.argmin(finite.reshape(array.shape[0], -1).all(axis=1)))
        raise InvalidInput(f"{field}: item {item} contains NaN or Inf")
    if unit_range:
        outside = (array < 0) | (array > 1)
        if outside.any():
            item = int(np.argmax(outside.reshape(array.shape[0], -1).any(axis=1)))
            raise InvalidInput(f"{field}: item {item} has pixel values outside [0, 1] "
                               f"(min {array.min():.3g}, max {array.max():.3g}); scale images "
                               "to [0, 1]")
    return array


MAX_TEMPERATURE = 10.0
"""Prior draws scaled further lie far outside anything the model was trained on."""


def check_sample(count: int, temperature: float, max_count: int) -> float:
    """Validate Sample's scalars; returns the temperature with 0 (unset) meaning 1."""
    if not 1 <= count <= max_count:
        raise InvalidInput(f"count: {count} is out of range; ask for 1..{max_count} samples")
    if temperature == 0:
        return 1.0
    if not math.isfinite(temperature) or not 0 < temperature <= MAX_TEMPERATURE:
        raise InvalidInput(f"temperature: {temperature} is invalid; use a value in (0, "
                           f"{MAX_TEMPERATURE:g}] (1 = the prior)")
    return temperature


def check_finite_outputs(field: str, outputs: tuple[np.ndarray, ...]) -> None:
    """No answer is OK with NaN or Inf: finite inputs can still overflow inside a graph."""
    for output in outputs:
        if np.isfinite(output).all():
            continue
        finite = np.isfinite(output)
        if not finite.all():
            item = int(np.argmin(finite.reshape(len(output), -1).all(axis=1)))
            raise InvalidInput(f"{field}: item {item} gives non-finite results; its values are "
                               "too large for the model (latents near the prior, N(0, 1), and "
                               "images in [0, 1] work)")


def check_inputs(operation: Operation, inputs: Inputs, manifest: Manifest,
                 context: RequestContext) -> None:
    """Every tensor input against its declaration and the manifest: shape, finite, range;
    and exactly one of the operation's alternative inputs."""
    if operation.one_of:
        sent = [name for name in operation.one_of if inputs.get(name) is not None]
        if len(sent) != 1:
            names = " or ".join(context.wire_name(name) for name in operation.one_of)
            raise InvalidInput(f"{operation.name}: send exactly one of {names}; got "
                               f"{', '.join(context.wire_name(n) for n in sent) or 'none'}")
    for spec in operation.inputs:
        array = inputs.get(spec.name)
        if array is None or spec.dims == (1,):
            continue
        shape = spec.shape(manifest)
        field = context.wire_name(spec.name)
        check_batch(array, field, shape[1:], spec.unit_range)
        if shape[0] != -1 and array.shape[0] != shape[0]:
            raise InvalidInput(f"{field}: {array.shape[0]} items; {operation.name} takes "
                               f"exactly {shape[0]}")
