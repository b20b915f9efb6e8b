"""Publish a run as the next version of a model: write to a temp folder, verify, rename."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

from export import verify
from export.onnx_export import OPSET, export_graphs
from service.plane.repository import (
    GRAPHS,
    MANIFEST,
    REQUIRED_GRAPHS,
    Manifest,
    ModelSignature,
    published_versions,
    read_manifest,
    row_shapes,
    sha256_file,
    tensor_names,
    verify_graphs,
)
from training.data import load_splits
from training.errors import UsageError
from training.run_dir import Run, load_run

logger = logging.getLogger(__name__)
TEMP_PREFIX = ".tmp-"
"""Unpublished work folders start with this; readers only see all-digit folder names."""


def _parity_inputs(run: Run, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Real test images (kept in the run folder, else read from the dataset) and prior draws."""
    n = max(verify.PARITY_BATCH_SIZES)
    images = run.parity_images
    if images is None:
        folder = data_dir or (Path(run.config["data_dir"]) if run.config.get("data_dir") else None)
        images = load_splits(run.config["dataset"], folder).test
    if len(images) < n:
        raise UsageError(f"{run.path}: {len(images)} parity images; the parity check needs {n}")
    latents = np.random.default_rng(0).standard_normal((n, run.model.config.latent_dim))
    return np.ascontiguousarray(images[:n]), latents.astype(np.float32)


def _choose_version(repo: Path, model_name: str, version: int | None) -> int:
    existing = published_versions(repo, model_name)
    if version is None:
        return (existing[-1] if existing else 0) + 1
    if version < 1:
        raise UsageError(f"--version must be >= 1, got {version}")
    if version in existing or (repo / model_name / str(version)).exists():
        raise UsageError(f"{repo / model_name / str(version)} already exists; versions are never "
                         "overwritten: pick another --version or omit it for the next one")
    return version


def _require_same_signature(repo: Path, model_name: str, run: Run) -> None:
    """A model's versions share one signature (the server refuses another): clients rely on it."""
    existing = published_versions(repo, model_name)
    if not existing:
        return
    latest = read_manifest(repo / model_name / str(existing[-1]))
    config = run.model.config
    candidate = ModelSignature(model_name, config.image_shape, config.latent_dim,
                               tensor_names(REQUIRED_GRAPHS, "inputs"),
                               tensor_names(REQUIRED_GRAPHS, "outputs"))
    changes = latest.signature.differences(candidate, str(repo / model_name / str(existing[-1])))
    if changes:
        raise UsageError(
            f"{run.path} has {'; '.join(changes)}. Publish it as another model: --model NAME "
            f"(e.g. --model {run.config['dataset']})")


def _prepare_repo(repo: Path, model_name: str) -> Path:
    if repo.exists() and not repo.is_dir():
        raise UsageError(f"--repo {repo} is a file; give a folder for the model repository")
    folder = repo / model_name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def publish(run_path: Path, repo: Path, model_name: str, version: int | None = None,
            opset: int = OPSET, data_dir: Path | None = None) -> Path:
    """Export, verify and atomically publish; returns the new version folder."""
    run = load_run(run_path)
    model_folder = _prepare_repo(repo, model_name)
    _require_same_signature(repo, model_name, run)
    chosen = _choose_version(repo, model_name, version)
    work = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=model_folder))
    steps = tqdm(total=4, desc=f"{model_name} v{chosen}", unit="step", leave=False, disable=None)
    try:
        steps.set_postfix_str("export")
        graphs = export_graphs(run.model, work, opset)
        steps.update()
        steps.set_postfix_str("onnx checker")
        for graph, path in graphs.items():
            verify.check_graph(path, *row_shapes(graph, run.model.config.image_shape,
                                                 run.model.config.latent_dim))
        steps.update()
        steps.set_postfix_str("parity")
        images, latents = _parity_inputs(run, data_dir)
        errors = verify.parity_errors(run.model, graphs, images, latents)
        verify.require_parity(errors)
        steps.update()
        manifest = _manifest(run, model_name, chosen, opset, work, errors, tuple(graphs))
        (work / MANIFEST).write_text(manifest.to_json())
        steps.update()
        steps.close()
        work.chmod(0o755)  # mkdtemp makes it owner-only; servers often run as another user
        final = model_folder / str(chosen)
        os.rename(work, final)  # atomic on one filesystem: readers see all or nothing
    except BaseException:
        steps.close()
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("published %s (parity %s)", final, errors)
    return final


def _manifest(run: Run, model_name: str, version: int, opset: int, folder: Path,
              errors: dict[str, float], graphs: tuple[str, ...]) -> Manifest:
    config = run.model.config
    return Manifest(
        model_name=model_name,
        version=version,
        image_shape=config.image_shape,
        latent_dim=config.latent_dim,
        arch=config.arch,
        opset=opset,
        sha256={GRAPHS[g].file: sha256_file(folder / GRAPHS[g].file) for g in graphs},
        parity={**errors, "tolerance": verify.PARITY_TOLERANCE,
                "log_px_z_tolerance": verify.SCORER_TOLERANCE,
                "batch_sizes": list(verify.PARITY_BATCH_SIZES)},
        versions={"torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": ort.__version__},
        training={
            "run": run.path.name,
            "dataset": run.config["dataset"],
            "noise": run.config["noise"],
            "binarize": run.config.get("binarize", False),
            "epochs": run.config.get("epochs"),
            "metrics": run.metrics.get("evaluation", {}),
        },
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        inputs=tensor_names(graphs, "inputs"),
        outputs=tensor_names(graphs, "outputs"),
    )


def check_version(version_dir: Path) -> Manifest:
    """Re-verify a published version: schema, sha256 of each graph, load and a small run."""
    if not version_dir.is_dir():
        raise UsageError(f"{version_dir}: no such version folder")
    manifest = read_manifest(version_dir)
    verify_graphs(version_dir, manifest)
    verify.smoke_run(version_dir, manifest.graphs, manifest.image_shape, manifest.latent_dim)
    return manifest
