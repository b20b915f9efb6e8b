"""Interpolate: frames decoded along the path between two codes (latent-space navigation)."""

from __future__ import annotations

import numpy as np

from service.config import ServerConfig
from service.context import RequestContext
from service.errors import InvalidInput
from service.operations.spec import BATCH, IMAGE, LATENT, Inputs, Operation, Outputs, TensorSpec, scalar
from service.plane.version import ModelVersion

PARALLEL_BELOW = 1e-6
"""sin of the angle between the codes under which slerp's weights lose precision: go linear."""


def path(a: np.ndarray, b: np.ndarray, steps: int, spherical: bool) -> np.ndarray:
    """[steps, latent] from a to b, both ends included: a straight line, or the great circle
    (slerp, Shoemake 1985) whose norms stay near those of the prior's draws."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if spherical:
        cos = np.dot(a64, b64) / max(float(np.linalg.norm(a64) * np.linalg.norm(b64)), 1e-300)
        angle = float(np.arccos(np.clip(cos, -1.0, 1.0)))
        if np.sin(angle) > PARALLEL_BELOW:
            frames = (np.sin((1 - t) * angle) * a64 + np.sin(t * angle) * b64) / np.sin(angle)
            return np.asarray(frames, np.float32)
    return np.asarray((1 - t) * a64 + t * b64, np.float32)


async def _interpolate(version: ModelVersion, inputs: Inputs, context: RequestContext,
                       config: ServerConfig) -> Outputs:
    steps = int(scalar(inputs, "steps", 0))
    if not 2 <= steps <= config.max_sample_count:
        raise InvalidInput(f"steps: {steps} is out of range; ask for 2..{config.max_sample_count} "
                           "frames (both ends included)")
    ends = inputs.get("z")
    if ends is None:
        ends, _ = await version.encode(inputs["x"], context)
    latents = path(ends[0], ends[1], steps, bool(scalar(inputs, "spherical", False)))
    return {"x_hat": await version.decode(latents, context), "z": latents}


INTERPOLATE = Operation(
    "interpolate", "two images (their posterior means) or two codes -> `steps` frames decoded "
    "along the linear or spherical path between them, in one batch",
    (TensorSpec("x", dims=(2, IMAGE), optional=True, unit_range=True),
     TensorSpec("z", dims=(2, LATENT), optional=True), TensorSpec("steps", "INT64"),
     TensorSpec("spherical", "BOOL", optional=True)),
    (TensorSpec("x_hat", dims=(BATCH, IMAGE)), TensorSpec("z", dims=(BATCH, LATENT))),
    ("encoder", "decoder"), _interpolate, blame="z", one_of=("x", "z"))
