"""Manifest.from_dict: schema 2 (any graphs beyond encoder and decoder, such as the scorer)
and schema 1 (encoder and decoder, read in schema 2's form); a manifest's outputs are names,
in any order; anything else is one ManifestError, never another exception."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from service.plane.repository import Manifest, ManifestError, read_manifest
from tests.conftest import as_schema_1


def _published(model_repo: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((model_repo / "vae" / "1" / "manifest.json").read_text())
    return data


@pytest.mark.parametrize("outputs", [
    {"encoder": ["mean", "log_var"], "decoder": ["x_hat"], "scorer": ["log_px_z"]},
    {"encoder": ["log_var", "mean"], "decoder": ["x_hat"], "scorer": ["log_px_z"]},
])
def test_outputs_in_any_order_are_read_as_written(model_repo: Path, outputs: Any) -> None:
    assert Manifest.from_dict({**_published(model_repo), "outputs": outputs}).outputs == outputs


@pytest.mark.parametrize("outputs", [
    {"encoder": 5, "decoder": ["x_hat"], "scorer": ["log_px_z"]},
    {"encoder": [["mean"], "log_var"], "decoder": ["x_hat"], "scorer": ["log_px_z"]},
    {"encoder": ["mean", "mean"], "decoder": ["x_hat"], "scorer": ["log_px_z"]},
    {"encoder": ["mean", "log_var", "mean"], "decoder": ["x_hat"], "scorer": ["log_px_z"]},
    {"encoder": ["mean", "log_var"], "scorer": ["log_px_z"]},
    {"encoder": ["mean", "log_var"], "decoder": ["x_hat"], "scorer": ["x_hat"]},
    {"encoder": ["mean", "log_var"], "decoder": ["x_hat"], "sampler": ["x_hat"]},
    ["mean", "log_var", "x_hat", "log_px_z"],
    None,
])
def test_outputs_that_are_not_each_graphs_names_once_are_refused(model_repo: Path,
                                                                 outputs: Any) -> None:
    with pytest.raises(ManifestError, match="outputs must name each graph's outputs once"):
        Manifest.from_dict({**_published(model_repo), "outputs": outputs})


def test_a_published_version_holds_the_scorer(model_repo: Path) -> None:
    manifest = read_manifest(model_repo / "vae" / "1")
    assert manifest.schema_version == 2 and manifest.graphs == ("encoder", "decoder", "scorer")
    assert manifest.inputs["scorer"] == ["z", "x"] and "scorer.onnx" in manifest.sha256


def test_a_schema_1_manifest_is_read_in_schema_2s_form(model_repo: Path, tmp_path: Path) -> None:
    folder = as_schema_1(shutil.copytree(model_repo / "vae" / "1", tmp_path / "1"))
    old, new = read_manifest(folder), read_manifest(model_repo / "vae" / "1")
    assert old.graphs == ("encoder", "decoder") and old.schema_version == 2
    assert old.inputs == {"encoder": ["x"], "decoder": ["z"]}
    assert old.outputs == {"encoder": ["mean", "log_var"], "decoder": ["x_hat"]}
    assert Manifest.from_dict(json.loads(old.to_json())) == old
    assert old.signature == new.signature  # either may replace the other
    assert new.signature.differences(old.signature, "the served vae/1") == []


@pytest.mark.parametrize(("change", "message"), [
    ({"schema_version": 3}, "schema_version is 3, this reader understands 1 and 2"),
    ({"schema_version": True}, "schema_version is True"),
    ({"inputs": {"encoder": "x", "decoder": "z", "scorer": "z"}},
     "inputs must name each graph's inputs once"),
    ({"inputs": {"encoder": ["x"], "decoder": ["z"]}},
     "inputs lists the graphs ['encoder', 'decoder'] but outputs ['encoder', 'decoder', "
     "'scorer']; each graph needs both"),
    ({"inputs": {"encoder": ["x"], "decoder": ["z"], "scorer": ["x"]}},
     "inputs must name each graph's inputs once"),
    ({"sha256": {"encoder.onnx": "0", "decoder.onnx": "0"}},
     "sha256 must name exactly ['decoder.onnx', 'encoder.onnx', 'scorer.onnx']"),
])
def test_a_schema_2_manifest_that_breaks_the_contract_is_refused(model_repo: Path,
                                                                 change: dict[str, Any],
                                                                 message: str) -> None:
    with pytest.raises(ManifestError, match=re.escape(message)):
        Manifest.from_dict({**_published(model_repo), **change})


@pytest.mark.parametrize(("change", "message"), [
    ({"inputs": {"encoder": ["x"], "decoder": ["z"]}},
     "inputs must map each graph to its input name in schema_version 1"),
    ({"inputs": {"encoder": "z", "decoder": "x"}}, "inputs must name each graph's inputs once"),
    ({"outputs": {"encoder": ["mean", "log_var"], "decoder": ["x_hat"], "scorer": ["log_px_z"]}},
     "outputs must name each graph's outputs once"),
    ({"sha256": {"encoder.onnx": "0", "decoder.onnx": "0", "scorer.onnx": "0"}},
     "sha256 must name exactly ['decoder.onnx', 'encoder.onnx']"),
])
def test_a_schema_1_manifest_holds_encoder_and_decoder_only(model_repo: Path, tmp_path: Path,
                                                            change: dict[str, Any],
                                                            message: str) -> None:
    folder = as_schema_1(shutil.copytree(model_repo / "vae" / "1", tmp_path / "1"))
    data = json.loads((folder / "manifest.json").read_text())
    with pytest.raises(ManifestError, match=re.escape(message)):
        Manifest.from_dict({**data, **change})
