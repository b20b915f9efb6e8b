"""Score: how unlikely each image is under the model, in nats (anomaly and drift scores)."""

from __future__ import annotations

import numpy as np

from service.config import ServerConfig
from service.context import RequestContext
from service.errors import InvalidInput
from service.operations.codec import IMAGES, SEED, request_seed
from service.operations.draws import posterior_noise
from service.operations.likelihood import BOUNDS, bounds, posterior_latents
from service.operations.spec import BATCH, Inputs, Operation, Outputs, TensorSpec, scalar
from service.plane.version import ROWS_PER_RUN, ModelVersion
from service.runtime.ort_runner import pack_rows

MAX_SCORE_ROWS = 65536
"""Most importance rows (images x samples) one Score request may ask for: about a second of
scorer compute for MNIST on one core, and the request's draws stay under 10 MB."""


def check_score(images: int, samples: int, max_samples: int) -> None:
    if not 1 <= samples <= max_samples:
        raise InvalidInput(f"samples: {samples} is out of range; ask for 1..{max_samples} "
                           "importance samples per image (1 = the ELBO alone)")
    if images * samples > MAX_SCORE_ROWS:
        raise InvalidInput(f"{images} images x {samples} samples = {images * samples} "
                           f"importance rows; one request may ask for {MAX_SCORE_ROWS}: send "
                           "fewer images per call, or fewer samples")


async def log_likelihoods(version: ModelVersion, images: np.ndarray, z: np.ndarray,
                          context: RequestContext) -> np.ndarray:
    """log p(x_i | z_ij) [N, k] from the scorer, in runs of its rows; image i is repeated k
    times per run only, so memory stays bounded by one run."""
    count, samples, latent_dim = z.shape
    flat_z = z.reshape(count * samples, latent_dim)
    step = ROWS_PER_RUN["scorer"]
    parts = []
    for start in range(0, count * samples, step):
        rows = np.arange(start, min(start + step, count * samples))
        packed = pack_rows(flat_z[rows], images[rows // samples])
        parts.append((await version.run("scorer", packed, context))["log_px_z"])
    return np.concatenate(parts).reshape(count, samples)


async def _score(version: ModelVersion, inputs: Inputs, context: RequestContext,
                 config: ServerConfig) -> Outputs:
    images = inputs["x"]
    samples = int(scalar(inputs, "samples", 1))
    check_score(len(images), samples, config.max_score_samples)
    seed = request_seed(inputs)
    mean, log_var = await version.encode(images, context)
    eps = posterior_noise(len(images), samples, version.manifest.latent_dim, seed)
    z = posterior_latents(mean, log_var, eps)
    scores = bounds(await log_likelihoods(version, images, z, context), z, eps, mean, log_var)
    version.scores.observe(scores["neg_elbo"], scores["nll"])
    return {**scores, "seed": np.array([seed], np.uint64)}


SCORE = Operation(
    "score", "images -> per image, in nats: -ELBO, its reconstruction and KL parts, and the "
    "importance-weighted bound -log p(x) from `samples` draws",
    (IMAGES, TensorSpec("samples", "INT64", optional=True), SEED),
    (*(TensorSpec(name, dims=(BATCH,)) for name in BOUNDS), TensorSpec("seed", "UINT64")),
    ("encoder", "scorer"), _score)
