"""Whole jobs: fit a model into a run folder, evaluate a run folder."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from training.config import TrainConfig
from training.data import load_splits
from training.errors import UsageError
from training.evaluate import binarized_test, evaluate, score_images
from training.model import build_model
from training.noise import Noise
from training.pictures import write_pictures
from training.report import write_report
from training.run_dir import load_run, save_run, write_json
from training.train import evaluate_loss, kl_warmup, lr_scheduler, train_epoch

logger = logging.getLogger(__name__)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    return torch.device(name)


def fit(config: TrainConfig) -> dict[str, Any]:
    """Train, evaluate and write the run folder; returns metrics.json's content."""
    device = _device(config.device)
    splits = load_splits(config.dataset, config.data_dir)
    torch.manual_seed(config.seed)
    model_config = replace(config.model, image_shape=splits.image_shape)
    model = build_model(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(splits.train)),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    scheduler = lr_scheduler(optimizer, config.lr_schedule, config.lr,
                             config.epochs * len(loader))
    generator = torch.Generator(device=device).manual_seed(config.seed)
    val = torch.from_numpy(splits.validation).to(device)
    test = torch.from_numpy(splits.test).to(device)
    run_config = {**config.to_dict(), "model": model_config.to_dict()}
    history: list[dict[str, float]] = []
    config.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    epochs = tqdm(range(config.epochs), desc="training", unit="epoch", disable=None)
    for epoch in epochs:
        train_loss = train_epoch(
            model, loader, optimizer, device, epoch=epoch,
            beta=kl_warmup(config.beta, config.kl_warmup_epochs),
            binarize=config.binarize, noise=config.noise, generator=generator,
            scheduler=scheduler,
        )
        val_loss = evaluate_loss(model, val, 1000, torch.Generator(device=device).manual_seed(0))
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss})
        epochs.write(f"epoch {epoch + 1}: train loss {train_loss:.2f}, "
                     f"validation loss {val_loss:.2f} (nats per image)")
        write_pictures(model, test, config.noise, config.out)
    seconds = time.monotonic() - started
    metrics: dict[str, Any] = {"history": history, "seconds_per_epoch": seconds / config.epochs}
    metrics["evaluation"] = evaluate(
        model, splits.train, splits.test, trained_noise=config.noise,
        iwae_samples=config.iwae_samples, eval_images=config.eval_images, device=device,
    )
    save_run(config.out, model.cpu(), run_config, metrics, splits.test)
    write_report(config.out, run_config, metrics)
    return metrics


def evaluate_run(
    path: Path, data_dir: Path | None, iwae_samples: int, eval_images: int, device_name: str
) -> dict[str, Any]:
    """Re-evaluate a run folder (e.g. with k=5000): update metrics.json, report.md and the
    pictures."""
    device = _device(device_name)
    run = load_run(path, device_name)
    config = run.config
    folder = Path(config["data_dir"]) if data_dir is None and config["data_dir"] else data_dir
    splits = load_splits(config["dataset"], folder)
    metrics = dict(run.metrics)
    metrics["evaluation"] = evaluate(
        run.model, splits.train, splits.test, trained_noise=Noise.parse(config["noise"]),
        iwae_samples=iwae_samples, eval_images=eval_images, device=device,
    )
    write_json(path / "metrics.json", metrics)
    write_report(path, config, metrics)
    write_pictures(run.model, torch.from_numpy(splits.test).to(device),
                   Noise.parse(config["noise"]), path)
    return metrics


def _per_image_file(out: Path) -> Path:
    """Refuse, before any work, a file np.savez would rename or could not write."""
    if out.suffix != ".npz":
        raise UsageError(f"--per-image {out}: name a .npz file (e.g. {out.with_suffix('.npz')})")
    if out.is_dir():
        raise UsageError(f"--per-image {out} is a folder; name a .npz file")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise UsageError(f"--per-image {out}: {out.parent} is not a folder this user can write "
                         "to; create it or name a file in another one")
    return out


def write_per_image(path: Path, out: Path, data_dir: Path | None, eval_images: int,
                    samples: int, seed: int, device_name: str) -> dict[str, np.ndarray]:
    """Score the first `eval_images` binarised test images one by one as the server's Score
    does (score_images) and write them with the images, samples and seed to `out`."""
    out = _per_image_file(out)
    for flag, value in (("--eval-images", eval_images), ("--per-image-samples", samples),
                        ("--seed", seed)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    device = _device(device_name)
    run = load_run(path, device_name)
    config = run.config
    folder = Path(config["data_dir"]) if data_dir is None and config["data_dir"] else data_dir
    test = torch.from_numpy(load_splits(config["dataset"], folder).test).to(device)
    images = binarized_test(test, eval_images).cpu().numpy()
    scores = score_images(run.model, images, samples, seed)
    data = {"images": images, **scores, "samples": np.array(samples), "seed": np.array(seed)}
    try:
        np.savez(out, allow_pickle=False, **data)
    except OSError as err:
        raise UsageError(f"--per-image {out}: cannot write it ({err.strerror})") from err
    return data
