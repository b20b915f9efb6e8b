"""The negative ELBO of Kingma & Welling, "Auto-Encoding Variational Bayes" (ICLR 2014)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def reconstruction_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) under a Bernoulli decoder, summed over pixels: one value per image."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return bce.flatten(1).sum(dim=1)


def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) in closed form (the paper's Appendix B), per image."""
    return -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp(), dim=1)


def vae_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mean: torch.Tensor,
    log_var: torch.Tensor,
    beta: float = 1.0,
) -> torch.Tensor:
    """Mean over the batch of BCE + beta * KL: per-image nats, the PyTorch-example metric at beta=1."""
    per_image = reconstruction_nll(logits, target) + beta * kl_divergence(mean, log_var)
    return per_image.mean()


def log_normal(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_var)) summed over the last axis."""
    return -0.5 * torch.sum(
        math.log(2 * math.pi) + log_var + (x - mean).pow(2) / log_var.exp(), dim=-1
    )
