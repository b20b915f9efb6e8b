"""PNG pictures of a model: samples from the prior, labelled reconstructions and denoising."""

from __future__ import annotations

from pathlib import Path

import torch

from service.pictures.figures import write_comparison
from service.pictures.png import display_scale, grid, write_png
from training.model import VAE
from training.noise import Noise

SAMPLES = "samples.png"
RECONSTRUCTIONS = "reconstructions.png"
DENOISING = "denoising.png"
SHOWN_NOISE = Noise("gaussian", 0.3)
"""The corruption denoising.png shows for a model trained without noise (said in the picture)."""


def denoising_caption(run: str, trained: Noise) -> list[str]:
    """What the denoising picture shows, and whether the model learnt to do it."""
    if trained.kind != "none":
        return [f"{run}: input noise {trained} (the noise it was trained on)"]
    return [f"{run}: input noise {SHOWN_NOISE}",
            "not trained to denoise (trained on clean images)"]


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
    write_comparison(folder / RECONSTRUCTIONS,
                     [("original", originals.cpu().numpy()),
                      ("reconstruction", reconstructed.cpu().numpy())],
                     [f"{folder.name}: test images, decode(mean of encode(x))"])

    shown = noise if noise.kind != "none" else SHOWN_NOISE
    noisy = shown.apply(originals, generator)
    denoised = torch.sigmoid(model.decode(model.encode(noisy)[0]))
    write_comparison(folder / DENOISING,
                     [("noisy", noisy.cpu().numpy()), ("denoised", denoised.cpu().numpy()),
                      ("clean", originals.cpu().numpy())],
                     denoising_caption(folder.name, noise))
