"""PNG pictures of a model: samples from the prior, reconstructions, denoising triplets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from service.images import display_scale, grid, write_png
from training.model import VAE
from training.noise import Noise

SAMPLES = "samples.png"
RECONSTRUCTIONS = "reconstructions.png"
DENOISING = "denoising.png"


@torch.no_grad()
def write_pictures(
    model: VAE, test: torch.Tensor, noise: Noise, folder: Path, seed: int = 0
) -> None:
    """Write the three picture files into `folder` from the first 8 test images."""
    generator = torch.Generator(device=test.device).manual_seed(seed)
    size = test.shape[-1]
    model.eval()
    z = torch.randn((64, model.config.latent_dim), generator=generator, device=test.device)
    samples = torch.sigmoid(model.decode(z)).cpu().numpy()
    write_png(folder / SAMPLES, grid(samples, 8), display_scale(size))

    originals = test[:8]
    reconstructed = torch.sigmoid(model.decode(model.encode(originals)[0]))
    pairs = torch.stack([originals, reconstructed], dim=1).flatten(0, 1).cpu().numpy()
    write_png(folder / RECONSTRUCTIONS, grid(pairs, 4), display_scale(size))

    shown = noise if noise.kind != "none" else Noise("gaussian", 0.3)
    noisy = shown.apply(originals, generator)
    denoised = torch.sigmoid(model.decode(model.encode(noisy)[0]))
    rows = torch.stack([noisy, denoised, originals], dim=1).flatten(0, 1).cpu().numpy()
    write_png(folder / DENOISING, grid(np.asarray(rows), 6), display_scale(size))
