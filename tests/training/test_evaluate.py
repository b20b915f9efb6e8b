"""Per-image scores (`vae-train evaluate --per-image`): the served Score's numbers, computed in
torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.onnx_export import ScorerGraph, export_module
from service.operations.draws import posterior_noise
from service.operations.likelihood import bounds, posterior_latents
from service.runtime.ort_runner import OrtRunner, pack_rows
from training.cli import main
from training.data import load_digits
from training.evaluate import binarized_test, iwae_nll, score_images
from training.run_dir import load_run


@pytest.fixture(scope="module")
def per_image(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("scores") / "scores.npz"
    assert main(["evaluate", str(digits_run), "--per-image", str(out), "--eval-images", "64",
                 "--per-image-samples", "100", "--seed", "3"]) == 0
    with np.load(out) as data:
        return dict(data)


def test_the_file_holds_each_images_bounds(per_image: dict[str, np.ndarray]) -> None:
    assert per_image["images"].shape == (64, 1, 8, 8)
    assert all(per_image[name].shape == (64,) for name in ("neg_elbo", "reconstruction", "kl", "nll"))
    assert (int(per_image["samples"]), int(per_image["seed"])) == (100, 3)
    binary = binarized_test(torch.from_numpy(load_digits().test), 64).numpy()
    assert per_image["images"].tobytes() == binary.tobytes()  # what the IWAE evaluation scores
    np.testing.assert_allclose(per_image["reconstruction"] + per_image["kl"],
                               per_image["neg_elbo"], rtol=1e-6)
    assert per_image["nll"].mean() < per_image["neg_elbo"].mean()  # IWAE: the tighter bound


def test_the_mean_nll_is_the_iwae_evaluations(per_image: dict[str, np.ndarray],
                                              digits_run: Path) -> None:
    model = load_run(digits_run).model
    iwae, stderr = iwae_nll(model, torch.from_numpy(per_image["images"]), 100,
                            torch.Generator().manual_seed(0))
    assert abs(float(per_image["nll"].mean()) - iwae) < 2.0, (per_image["nll"].mean(), iwae, stderr)


def test_the_scores_are_the_scorer_graphs_in_onnx_runtime(digits_run: Path,
                                                          tmp_path: Path) -> None:
    """The server's path: the same draws and bounds, log p(x | z) from scorer.onnx."""
    model = load_run(digits_run).model
    images = binarized_test(torch.from_numpy(load_digits().test), 6).numpy()
    path = tmp_path / "scorer.onnx"
    export_module(ScorerGraph(model), (torch.randn(2, 8), torch.rand(2, 1, 8, 8)), path,
                  ["z", "x"], ["log_px_z"], batched=2)
    with torch.no_grad():
        mean, log_var = (t.numpy() for t in model.encode(torch.from_numpy(images)))
    eps = posterior_noise(6, 10, 8, 7)
    z = posterior_latents(mean, log_var, eps)
    (log_px_z,) = OrtRunner(path, "cpu", 1, ["z", "x"], ["log_px_z"]).run(
        pack_rows(z.reshape(60, 8), np.repeat(images, 10, axis=0)))
    served = bounds(log_px_z.reshape(6, 10), z, eps, mean, log_var)
    ours = score_images(model, images, samples=10, seed=7)
    for name, values in served.items():
        np.testing.assert_allclose(ours[name], values, atol=1e-3, err_msg=name)


@pytest.mark.parametrize(("name", "message"), [
    ("scores.txt", "name a .npz file"),
    ("missing/scores.npz", "is not a folder this user can write to"),
    ("folder.npz", "is a folder"),
])
def test_a_bad_per_image_path_is_one_line_and_exit_2(digits_run: Path, tmp_path: Path, name: str,
                                                     message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "folder.npz").mkdir()
    assert main(["evaluate", str(digits_run), "--per-image", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
