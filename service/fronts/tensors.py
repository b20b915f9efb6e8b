"""vae.v1 wire format: pb Tensor <-> ndarray (float32, little-endian, row-major, shape first)."""

from __future__ import annotations

import math

import numpy as np

from service.errors import InvalidInput
from service.operations.checks import check_wire_shape
from service.vae.v1 import vae_pb2

FLOAT32 = np.dtype("<f4")


def to_tensor(array: np.ndarray) -> vae_pb2.Tensor:
    """Little-endian float32, row-major, shape first: the wire format of docs/architecture.md."""
    data = np.ascontiguousarray(array, dtype=FLOAT32)
    return vae_pb2.Tensor(shape=data.shape, data=data.tobytes())


def to_array(tensor: vae_pb2.Tensor) -> np.ndarray:
    """Decode a tensor from a trusted peer (the server's responses), without validation."""
    return np.frombuffer(tensor.data, dtype=FLOAT32).reshape(tuple(tensor.shape))


def from_tensor(tensor: vae_pb2.Tensor, field: str) -> np.ndarray:
    """Decode the wire format only: a shape, and exactly 4 bytes per value (no copy).

    Whether the shape, values and range suit the model is the data plane's check.
    """
    if not tensor.shape:
        raise InvalidInput(f"{field}: missing or empty tensor; send shape and float32 data")
    shape = check_wire_shape(tensor.shape, field, FLOAT32.itemsize)
    needed = 4 * math.prod(shape)
    data = tensor.data  # each read of a bytes field is a fresh copy
    if len(data) != needed:
        raise InvalidInput(f"{field}: {len(data)} bytes of data; shape {list(shape)} "
                           f"float32 needs {needed}")
    return np.frombuffer(data, dtype=FLOAT32).reshape(shape)
