"""The VAE's four basic operations: encode, decode, sample (from the prior), denoise."""

from __future__ import annotations

import secrets

import numpy as np

from service.config import ServerConfig
from service.context import RequestContext
from service.operations.checks import check_sample
from service.operations.draws import prior_latents
from service.operations.spec import BATCH, IMAGE, LATENT, Inputs, Operation, Outputs, TensorSpec, scalar
from service.plane.version import ModelVersion

MAX_SEED = 2**63 - 1
IMAGES = TensorSpec("x", dims=(BATCH, IMAGE), unit_range=True)
LATENTS = TensorSpec("z", dims=(BATCH, LATENT))
RECONSTRUCTIONS = TensorSpec("x_hat", dims=(BATCH, IMAGE))
SEED = TensorSpec("seed", "UINT64", optional=True)


def request_seed(inputs: Inputs) -> int:
    """The request's seed; 0 means: pick one (returned, so the draw can be repeated)."""
    return int(scalar(inputs, "seed", 0)) or secrets.randbelow(MAX_SEED) + 1


async def _encode(version: ModelVersion, inputs: Inputs, context: RequestContext,
                  config: ServerConfig) -> Outputs:
    mean, log_var = await version.encode(inputs["x"], context)
    return {"mean": mean, "log_var": log_var}


async def _decode(version: ModelVersion, inputs: Inputs, context: RequestContext,
                  config: ServerConfig) -> Outputs:
    return {"x_hat": await version.decode(inputs["z"], context)}


async def _sample(version: ModelVersion, inputs: Inputs, context: RequestContext,
                  config: ServerConfig) -> Outputs:
    count = int(scalar(inputs, "count", 0))
    temperature = check_sample(count, float(scalar(inputs, "temperature", 0.0)),
                               config.max_sample_count)
    seed = request_seed(inputs)
    latents = prior_latents(count, version.manifest.latent_dim, seed, temperature)
    return {"x_hat": await version.decode(latents, context), "z": latents,
            "seed": np.array([seed], np.uint64)}


async def _denoise(version: ModelVersion, inputs: Inputs, context: RequestContext,
                   config: ServerConfig) -> Outputs:
    """decode(posterior mean): the most likely clean image under the model."""
    mean, _ = await version.encode(inputs["x"], context)
    return {"x_hat": await version.decode(mean, context)}


ENCODE = Operation(
    "encoder", "images -> posterior mean and log-variance", (IMAGES,),
    (TensorSpec("mean", dims=(BATCH, LATENT)), TensorSpec("log_var", dims=(BATCH, LATENT))),
    ("encoder",), _encode, batched=True)
DECODE = Operation("decoder", "latents -> images (pixel probabilities)", (LATENTS,),
                   (RECONSTRUCTIONS,), ("decoder",), _decode, batched=True)
SAMPLE = Operation(
    "sample", "count draws from N(0, temperature^2 I), decoded, from the request's own seed",
    (TensorSpec("count", "INT64"), SEED, TensorSpec("temperature", optional=True)),
    (RECONSTRUCTIONS, TensorSpec("z", dims=(BATCH, LATENT)), TensorSpec("seed", "UINT64")),
    ("decoder",), _sample, blame="temperature")
DENOISE = Operation("denoise", "noisy images -> decode(posterior mean)", (IMAGES,),
                    (RECONSTRUCTIONS,), ("encoder", "decoder"), _denoise, batched=True)
