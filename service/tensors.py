"""pb Tensor <-> ndarray, and all input validation, at the edge before any queue."""

from __future__ import annotations

import math

import numpy as np

from service.errors import InvalidInput
from service.vae.v1 import vae_pb2

FLOAT32 = np.dtype("<f4")


def to_tensor(array: np.ndarray) -> vae_pb2.Tensor:
    """Little-endian float32, row-major, shape first: the wire format of docs/architecture.md."""
    data = np.ascontiguousarray(array, dtype=FLOAT32)
    return vae_pb2.Tensor(shape=data.shape, data=data.tobytes())


def to_array(tensor: vae_pb2.Tensor) -> np.ndarray:
    """Decode a tensor from a trusted peer (the server's responses), without validation."""
    return np.frombuffer(tensor.data, dtype=FLOAT32).reshape(tuple(tensor.shape))


def from_tensor(
    tensor: vae_pb2.Tensor, field: str, item_shape: tuple[int, ...], unit_range: bool
) -> np.ndarray:
    """Validate and decode a batch [N, *item_shape]; any problem raises InvalidInput."""
    shape = tuple(int(v) for v in tensor.shape)
    expected = "[N, " + ", ".join(str(v) for v in item_shape) + "]"
    if not shape:
        raise InvalidInput(f"{field}: missing or empty tensor; expected shape {expected} float32")
    if len(shape) != len(item_shape) + 1 or shape[1:] != item_shape:
        raise InvalidInput(f"{field}: shape {list(shape)} does not match {expected}")
    if shape[0] < 1:
        raise InvalidInput(f"{field}: empty batch (N = {shape[0]}); send at least one item")
    needed = 4 * math.prod(shape)
    if len(tensor.data) != needed:
        raise InvalidInput(f"{field}: {len(tensor.data)} bytes of data; shape {list(shape)} "
                           f"float32 needs {needed}")
    array = np.frombuffer(tensor.data, dtype=FLOAT32).reshape(shape)
    finite = np.isfinite(array)
    if not finite.all():
        item = int(np.argmin(finite.reshape(shape[0], -1).all(axis=1)))
        raise InvalidInput(f"{field}: item {item} contains NaN or Inf")
    if unit_range:
        outside = (array < 0) | (array > 1)
        if outside.any():
            item = int(np.argmax(outside.reshape(shape[0], -1).any(axis=1)))
            raise InvalidInput(f"{field}: item {item} has pixel values outside [0, 1] "
                               f"(min {array.min():.3g}, max {array.max():.3g}); scale images "
                               "to [0, 1]")
    return array.astype(np.float32, copy=False)


def check_sample(count: int, temperature: float, max_count: int) -> float:
    """Validate Sample's scalars; returns the temperature with 0 (unset) meaning 1."""
    if not 1 <= count <= max_count:
        raise InvalidInput(f"count: {count} is out of range; ask for 1..{max_count} samples")
    if temperature == 0:
        return 1.0
    if not math.isfinite(temperature) or temperature < 0:
        raise InvalidInput(f"temperature: {temperature} is invalid; use a finite value > 0 "
                           "(1 = the prior)")
    return temperature
