"""The run folder: weights, config.json and metrics.json; the contract between train and export."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.errors import UsageError
from training.model import VAE, ModelConfig, build_model

WEIGHTS = "model.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
PARITY_IMAGES = "parity_images.npy"
"""Test images kept beside the weights, so export checks parity without the dataset."""
PARITY_IMAGE_COUNT = 64


@dataclass
class Run:
    """A trained model with the settings and measurements of the run that made it."""

    path: Path
    model: VAE
    config: dict[str, Any]
    metrics: dict[str, Any]
    parity_images: np.ndarray | None
    """None for run folders written before the images were kept."""


def save_run(path: Path, model: VAE, config: dict[str, Any], metrics: dict[str, Any],
             test_images: np.ndarray) -> None:
    """Write weights, config.json, metrics.json and the parity images into `path`."""
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / WEIGHTS)
    np.save(path / PARITY_IMAGES, np.ascontiguousarray(test_images[:PARITY_IMAGE_COUNT], np.float32))
    write_json(path / CONFIG, config)
    write_json(path / METRICS, metrics)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: cannot read JSON ({err})") from err
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data


def load_run(path: Path, device: str = "cpu") -> Run:
    """Rebuild the model of a run folder; a missing or inconsistent folder raises UsageError."""
    if not path.is_dir():
        raise UsageError(f"run folder {path} does not exist; train one with vae-train")
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise UsageError(f"run folder {path} has no {name}; is the training finished?")
    config = _read_json(path / CONFIG)
    metrics = _read_json(path / METRICS) if (path / METRICS).is_file() else {}
    try:
        model = build_model(ModelConfig.from_dict(config["model"]))
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(f"{path / CONFIG}: no valid 'model' section ({err})") from err
    try:
        state = torch.load(path / WEIGHTS, map_location=device, weights_only=True)
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UsageError(f"{path}: {WEIGHTS} does not match {CONFIG} ({first})") from err
    except Exception as err:  # unpickling errors have no common base class
        raise UsageError(f"{path / WEIGHTS}: cannot read the weights ({err})") from err
    images = np.load(path / PARITY_IMAGES) if (path / PARITY_IMAGES).is_file() else None
    return Run(path=path, model=model.to(device).eval(), config=config, metrics=metrics,
               parity_images=images)
