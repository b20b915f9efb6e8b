"""The training loop: one function per epoch, arguments passed explicitly."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.loss import vae_loss
from training.model import VAE
from training.noise import Noise

BetaSchedule = Callable[[float], float]
"""Maps the training progress in epochs (fractional) to the KL weight."""


def kl_warmup(beta: float, warmup_epochs: float) -> BetaSchedule:
    """KL weight rising linearly from 0 to `beta` over `warmup_epochs` (Bowman et al. 2016)."""
    if warmup_epochs <= 0:
        return lambda _: beta
    return lambda progress: beta * min(1.0, progress / warmup_epochs)


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str, lr: float, steps: int
                 ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-step schedule named by TrainConfig.lr_schedule; None for a constant rate."""
    if schedule == "constant":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps,
                                               pct_start=0.1)


def prepare_batch(
    images: torch.Tensor, binarize: bool, noise: Noise, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (input, target): targets are (binarised) clean images, inputs add the noise."""
    if binarize:
        images = torch.bernoulli(images, generator=generator)
    return noise.apply(images, generator), images


def train_epoch(
    model: VAE,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    epoch: int,
    beta: BetaSchedule,
    binarize: bool,
    noise: Noise,
    generator: torch.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> float:
    """Train one epoch and return the mean per-image loss (nats) at the scheduled KL weight."""
    model.train()
    total, seen = 0.0, 0
    steps = len(loader)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", unit="batch", leave=False, disable=None)
    for step, (images,) in enumerate(bar):
        inputs, targets = prepare_batch(images.to(device), binarize, noise, generator)
        logits, mean, log_var = model(inputs, generator)
        loss = vae_loss(logits, targets, mean, log_var, beta(epoch + step / steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{total / seen:.2f}")
    return total / seen


@torch.no_grad()
def evaluate_loss(
    model: VAE, images: torch.Tensor, batch_size: int, generator: torch.Generator
) -> float:
    """Per-image BCE + KL with z sampled, as the PyTorch examples VAE reports its test loss."""
    model.eval()
    total = 0.0
    for batch in images.split(batch_size):
        logits, mean, log_var = model(batch, generator)
        total += vae_loss(logits, batch, mean, log_var).item() * len(batch)
    return total / len(images)
