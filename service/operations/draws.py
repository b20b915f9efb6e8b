"""The random draws of Sample and Score, from the request's own seed: same seed, same draws,
on any server, in any batch. `vae-train evaluate --per-image` draws through here too, so its
per-image scores and the served ones agree."""

from __future__ import annotations

import numpy as np


def _stream(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def prior_latents(count: int, latent_dim: int, seed: int, temperature: float) -> np.ndarray:
    """z ~ N(0, temperature^2 I) [count, latent_dim]."""
    z = _stream(seed).standard_normal((count, latent_dim), dtype=np.float32)
    return z * np.float32(temperature)


def posterior_noise(images: int, samples: int, latent_dim: int, seed: int) -> np.ndarray:
    """eps ~ N(0, I) [images, samples, latent_dim]: z = mean + exp(log_var / 2) * eps."""
    return _stream(seed).standard_normal((images, samples, latent_dim), dtype=np.float32)
