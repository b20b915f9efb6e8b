"""Manifest.from_dict: a manifest's outputs are names, in any order; anything else is one
ManifestError, never another exception."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.plane.repository import Manifest, ManifestError


@pytest.mark.parametrize("outputs", [
    {"encoder": ["mean", "log_var"], "decoder": ["x_hat"]},
    {"encoder": ["log_var", "mean"], "decoder": ["x_hat"]},
])
def test_outputs_in_any_order_are_read_as_written(model_repo: Path, outputs: Any) -> None:
    data = json.loads((model_repo / "vae" / "1" / "manifest.json").read_text())
    assert Manifest.from_dict({**data, "outputs": outputs}).outputs == outputs


@pytest.mark.parametrize("outputs", [
    {"encoder": 5, "decoder": ["x_hat"]},
    {"encoder": [["mean"], "log_var"], "decoder": ["x_hat"]},
    {"encoder": ["mean", "mean"], "decoder": ["x_hat"]},
    {"encoder": ["mean", "log_var", "mean"], "decoder": ["x_hat"]},
    {"encoder": ["mean", "log_var"]},
    {"encoder": ["mean", "log_var"], "decoder": ["x_hat"], "sampler": ["x_hat"]},
    ["mean", "log_var", "x_hat"],
])
def test_outputs_that_are_not_each_graphs_names_once_are_refused(model_repo: Path,
                                                                 outputs: Any) -> None:
    data = json.loads((model_repo / "vae" / "1" / "manifest.json").read_text())
    with pytest.raises(ManifestError, match="outputs must name each graph's outputs once"):
        Manifest.from_dict({**data, "outputs": outputs})
