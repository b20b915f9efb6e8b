"""The per-image bounds of Score from the scorer graph's log p(x | z): numpy only, so the
server and `vae-train evaluate --per-image` compute them with the same code.

With eps ~ N(0, I) and z = mean + exp(log_var / 2) * eps (k draws per image):
reconstruction = -mean_k log p(x | z), kl = KL(q(z | x) || N(0, I)) in closed form,
neg_elbo = reconstruction + kl, and nll = -log mean_k p(x | z) p(z) / q(z | x), the
importance-weighted bound of Burda et al. (2015), "Importance Weighted Autoencoders".
"""

from __future__ import annotations

import math

import numpy as np

LOG_2PI = math.log(2 * math.pi)
BOUNDS = ("neg_elbo", "reconstruction", "kl", "nll")
"""Per-image outputs of Score, in nats."""


def posterior_latents(mean: np.ndarray, log_var: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """z [N, k, latent] = mean + exp(log_var / 2) * eps, in float32 as the graphs see it."""
    z: np.ndarray = mean[:, None, :] + np.exp(0.5 * log_var)[:, None, :] * eps
    return z


def bounds(log_px_z: np.ndarray, z: np.ndarray, eps: np.ndarray, mean: np.ndarray,
           log_var: np.ndarray) -> dict[str, np.ndarray]:
    """log_px_z [N, k] and the draws -> each bound [N] (float32), summed in float64.

    log q(z | x) uses eps, not z - mean: the same number without the cancellation.
    """
    latent_dim = z.shape[-1]
    log_px_z = log_px_z.astype(np.float64)
    log_pz = -0.5 * (np.square(z, dtype=np.float64).sum(-1) + latent_dim * LOG_2PI)
    log_qz = -0.5 * (np.square(eps, dtype=np.float64).sum(-1)
                     + log_var.astype(np.float64).sum(-1)[:, None] + latent_dim * LOG_2PI)
    log_w = log_px_z + log_pz - log_qz
    top = log_w.max(axis=1, keepdims=True)
    log_mean_w = (top[:, 0] + np.log(np.exp(log_w - top).mean(axis=1)))
    mean64, log_var64 = mean.astype(np.float64), log_var.astype(np.float64)
    kl = 0.5 * (np.square(mean64) + np.exp(log_var64) - 1 - log_var64).sum(-1)
    reconstruction = -log_px_z.mean(axis=1)
    return {"neg_elbo": (reconstruction + kl).astype(np.float32),
            "reconstruction": reconstruction.astype(np.float32),
            "kl": kl.astype(np.float32), "nll": (-log_mean_w).astype(np.float32)}
