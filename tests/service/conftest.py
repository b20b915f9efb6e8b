"""Fixtures of the version tests: a live repository and runs to publish into it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def variant_runs(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three runs with other weights than digits_run (the weights nudged, seeds 1..3)."""
    import torch

    runs = []
    for seed in (1, 2, 3):
        run = shutil.copytree(digits_run, tmp_path_factory.mktemp("variants") / f"run{seed}")
        state = torch.load(run / "model.pt", weights_only=True)
        generator = torch.Generator().manual_seed(seed)
        nudged = {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in state.items()}
        torch.save(nudged, run / "model.pt")
        runs.append(run)
    return runs


@pytest.fixture
def live_repo(model_repo: Path, tmp_path: Path) -> Path:
    """A repository holding only vae/1, which the test then publishes into."""
    repo = tmp_path / "live"
    shutil.copytree(model_repo / "vae" / "1", repo / "vae" / "1")
    return repo


def publish(run: Path, repo: Path, version: int, tamper: bool = False) -> Path:
    """vae-export into a staging repository, optionally edit a graph, then move it in atomically."""
    from export.cli import main

    staging = repo.parent / f"staging-{version}"
    assert main([str(run), "--repo", str(staging), "--version", str(version)]) == 0
    folder = staging / "vae" / str(version)
    if tamper:
        blob = bytearray((folder / "decoder.onnx").read_bytes())
        blob[-10] ^= 0xFF
        (folder / "decoder.onnx").write_bytes(bytes(blob))
    (repo / "vae").mkdir(parents=True, exist_ok=True)
    return folder.rename(repo / "vae" / str(version))
