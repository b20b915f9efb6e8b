"""How good a trained model is: test loss, importance-sampled NLL, PSNR beside PCA and a filter."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import median_filter
from tqdm import tqdm

from export.onnx_export import ScorerGraph
from service.operations.draws import posterior_noise
from service.operations.likelihood import bounds, posterior_latents
from training.likelihood import OnnxLikelihood
from training.loss import kl_divergence, log_normal, reconstruction_nll
from training.model import VAE
from training.noise import Noise
from training.train import evaluate_loss

DENOISING_CONDITIONS = ("gaussian:0.3", "gaussian:0.5", "salt-pepper:0.2")
"""Corruptions every report measures, whatever the model was trained on."""
BINARIZE_SEED = 1234
"""Seed of the one fixed binarisation of the test set used for likelihoods."""


IWAE_CHUNK = 2500
"""Latents per ONNX Runtime call in iwae_nll: large enough to keep every core busy."""
SCORE_CHUNK_ROWS = 4096
"""(latent, image) rows per decoder call in score_images."""


def binarized_test(test: torch.Tensor, eval_images: int) -> torch.Tensor:
    """The one fixed binarisation of the first `eval_images` test images that likelihoods use."""
    binarizer = torch.Generator(device=test.device).manual_seed(BINARIZE_SEED)
    return torch.bernoulli(test[:eval_images], generator=binarizer)


@torch.no_grad()
def score_images(model: VAE, images: np.ndarray, samples: int, seed: int
                 ) -> dict[str, np.ndarray]:
    """Per-image neg_elbo, reconstruction, kl and nll [N] as Score computes them: the same
    draws (service.operations.draws) and bounds (service.operations.likelihood); only
    log p(x | z) differs, torch here against the scorer graph in ONNX Runtime there."""
    model.eval()
    device = next(model.parameters()).device
    x = torch.from_numpy(images).to(device)
    encoded = [model.encode(chunk) for chunk in x.split(SCORE_CHUNK_ROWS)]
    mean = torch.cat([m for m, _ in encoded]).cpu().numpy()
    log_var = torch.cat([v for _, v in encoded]).cpu().numpy()
    eps = posterior_noise(len(images), samples, model.config.latent_dim, seed)
    z = posterior_latents(mean, log_var, eps)
    rows = torch.from_numpy(z.reshape(-1, z.shape[-1])).to(device)
    scorer = ScorerGraph(model)
    log_px_z = np.empty(len(rows), np.float32)
    for start in tqdm(range(0, len(rows), SCORE_CHUNK_ROWS), desc=f"score k={samples}",
                      unit="chunk", leave=False, disable=None):
        stop = min(start + SCORE_CHUNK_ROWS, len(rows))
        image_of_row = torch.arange(start, stop, device=device) // samples
        log_px_z[start:stop] = scorer(rows[start:stop], x[image_of_row]).cpu().numpy()
    return bounds(log_px_z.reshape(len(images), samples), z, eps, mean, log_var)


@torch.no_grad()
def iwae_nll(
    model: VAE, images: torch.Tensor, k: int, generator: torch.Generator, chunk: int = IWAE_CHUNK
) -> tuple[float, float]:
    """Mean and standard error of -log p(x) estimated with k importance samples (Burda et al. 2015).

    log p(x) >= log mean_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x); the bound tightens as k grows.
    The encoder runs in torch, once per image; the k decoder passes run in ONNX Runtime.
    """
    model.eval()
    log_likelihood = OnnxLikelihood(model)
    values = []
    for x in tqdm(images, desc=f"IWAE k={k}", unit="image", leave=False, disable=None):
        x = x.unsqueeze(0)
        x_np = x.cpu().numpy()
        mean, log_var = model.encode(x)
        log_weights = []
        for size in [chunk] * (k // chunk) + ([k % chunk] if k % chunk else []):
            z = model.reparameterize(mean.expand(size, -1), log_var.expand(size, -1), generator)
            log_px_z = torch.from_numpy(log_likelihood(z.cpu().numpy(), x_np)).to(z.device)
            log_pz = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
            log_qz = log_normal(z, mean, log_var)
            log_weights.append(log_px_z + log_pz - log_qz)
        log_w = torch.cat(log_weights)
        values.append(-(torch.logsumexp(log_w, 0) - math.log(k)).item())
    nll = np.asarray(values)
    return float(nll.mean()), float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else 0.0


@torch.no_grad()
def elbo_nll(model: VAE, images: torch.Tensor, generator: torch.Generator) -> float:
    """-ELBO with one sample: the k=1 case of iwae_nll, an upper bound on -log p(x)."""
    mean, log_var = model.encode(images)
    logits = model.decode(model.reparameterize(mean, log_var, generator))
    return float((reconstruction_nll(logits, images) + kl_divergence(mean, log_var)).mean())


def psnr(clean: np.ndarray, other: np.ndarray) -> float:
    """Mean over images of 10 log10(1 / MSE) for pixels in [0, 1]; identical images cap at 100 dB."""
    mse = ((clean - other) ** 2).reshape(len(clean), -1).mean(axis=1)
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))


@dataclass(frozen=True)
class Pca:
    """Linear autoencoder baseline: the article's 'autoencoder without nonlinearity'."""

    mean: np.ndarray
    components: np.ndarray

    @classmethod
    def fit(cls, images: np.ndarray, dim: int) -> Pca:
        flat = images.reshape(len(images), -1).astype(np.float64)
        mean = flat.mean(axis=0)
        _, vectors = np.linalg.eigh(np.cov(flat - mean, rowvar=False))
        return cls(mean=mean, components=vectors[:, ::-1][:, :dim].T)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1) - self.mean
        out = (flat @ self.components.T) @ self.components + self.mean
        return np.asarray(np.clip(out, 0.0, 1.0).reshape(images.shape), dtype=np.float32)


@torch.no_grad()
def vae_reconstruct(model: VAE, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """decode(mean(encode(x))) as probabilities: what the service's Denoise returns."""
    model.eval()
    parts = [torch.sigmoid(model.decode(model.encode(b)[0])) for b in images.split(batch_size)]
    return np.asarray(torch.cat(parts).cpu().numpy(), dtype=np.float32)


def denoising_table(
    model: VAE, test: torch.Tensor, pca: Pca, conditions: list[str], seed: int
) -> dict[str, dict[str, float]]:
    """PSNR (dB) against the clean image per corruption: noisy input, median 3x3, PCA, VAE."""
    clean = test.cpu().numpy()
    table = {"clean": {"pca": psnr(clean, pca.reconstruct(clean)),
                       "vae": psnr(clean, vae_reconstruct(model, test))}}
    for spec in conditions:
        generator = torch.Generator(device=test.device).manual_seed(seed)
        noisy = Noise.parse(spec).apply(test, generator)
        noisy_np = noisy.cpu().numpy()
        table[spec] = {
            "noisy": psnr(clean, noisy_np),
            "median3x3": psnr(clean, median_filter(noisy_np, size=(1, 1, 3, 3))),
            "pca": psnr(clean, pca.reconstruct(noisy_np)),
            "vae": psnr(clean, vae_reconstruct(model, noisy)),
        }
    return table


def evaluate(
    model: VAE,
    train: np.ndarray,
    test: np.ndarray,
    *,
    trained_noise: Noise,
    iwae_samples: int,
    eval_images: int,
    device: torch.device,
    seed: int = 0,
) -> dict[str, object]:
    """Every reported number for one model, as a JSON-ready dict."""
    generator = torch.Generator(device=device).manual_seed(seed)
    test_t = torch.from_numpy(test).to(device)
    binary = binarized_test(test_t, eval_images)
    started = time.monotonic()
    nll, nll_se = iwae_nll(model, binary, iwae_samples, generator)
    iwae_seconds = time.monotonic() - started
    conditions = list(DENOISING_CONDITIONS)
    if trained_noise.kind != "none" and str(trained_noise) not in conditions:
        conditions.insert(0, str(trained_noise))
    return {
        "test_loss": evaluate_loss(model, test_t, 1000, generator),
        "test_images": len(test_t),
        "binarized_test_elbo_nll": elbo_nll(model, binary, generator),
        "iwae_nll": nll,
        "iwae_nll_stderr": nll_se,
        "iwae_samples": iwae_samples,
        "iwae_images": len(binary),
        "iwae_seconds": iwae_seconds,
        "psnr": denoising_table(model, test_t, Pca.fit(train, model.config.latent_dim),
                                conditions, seed),
    }
