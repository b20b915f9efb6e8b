import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export import verify
from export.cli import build_parser, main
from export.onnx_export import ScorerGraph
from service.plane.repository import read_manifest, sha256_file
from tests.conftest import ROOT, as_schema_1
from training.data import load_digits
from training.run_dir import load_run


@pytest.mark.parametrize("model", ["vae", "vae-conv", "vae-subpixel"])
def test_parity_within_tolerance_at_three_batch_sizes(model_repo: Path, model: str,
                                                      request: pytest.FixtureRequest) -> None:
    fixture = {"vae": "digits_run", "vae-conv": "digits_conv_run",
               "vae-subpixel": "digits_subpixel_run"}[model]
    run = load_run(request.getfixturevalue(fixture))
    folder = model_repo / model / "1"
    images = load_digits().test[:64]
    latents = np.random.default_rng(5).standard_normal((64, 8)).astype(np.float32)
    graphs = {graph: folder / f"{graph}.onnx" for graph in ("encoder", "decoder", "scorer")}
    errors = verify.parity_errors(run.model, graphs, images, latents)
    assert set(errors) == {"mean", "log_var", "x_hat", "log_px_z"}
    assert max(errors["mean"], errors["log_var"], errors["x_hat"]) <= 1e-5
    assert errors["log_px_z"] <= verify.SCORER_TOLERANCE
    manifest = read_manifest(folder)
    assert manifest.parity["batch_sizes"] == [1, 3, 64] and manifest.parity["x_hat"] <= 1e-5
    assert manifest.parity["log_px_z"] <= manifest.parity["log_px_z_tolerance"] == 1e-3


def test_graphs_have_the_design_signature_and_a_dynamic_batch(model_repo: Path) -> None:
    folder = model_repo / "vae" / "1"
    verify.check_graph(folder / "encoder.onnx", {"x": (1, 8, 8)}, {"mean": (8,), "log_var": (8,)})
    verify.check_graph(folder / "decoder.onnx", {"z": (8,)}, {"x_hat": (1, 8, 8)})
    verify.check_graph(folder / "scorer.onnx", {"z": (8,), "x": (1, 8, 8)}, {"log_px_z": ()})
    decoder = ort.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
    scorer = ort.InferenceSession(str(folder / "scorer.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 100):
        (x_hat,) = decoder.run(None, {"z": np.zeros((n, 8), np.float32)})
        assert x_hat.shape == (n, 1, 8, 8) and 0 <= x_hat.min() <= x_hat.max() <= 1
        (log_px_z,) = scorer.run(None, {"z": np.zeros((n, 8), np.float32), "x": x_hat})
        assert log_px_z.shape == (n,) and np.all(log_px_z < 0)


def _ort_log_sigmoid(logits: np.ndarray) -> np.ndarray:
    """Log(Sigmoid(logits)) in ONNX Runtime: what the exporter makes of BCE-with-logits."""
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["l"], ["s"]), helper.make_node("Log", ["s"], ["y"])],
        "log_sigmoid", [value("l", TensorProto.FLOAT, ["n"])], [value("y", TensorProto.FLOAT, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"l": logits.ravel()})
    return np.asarray(out)


@pytest.mark.parametrize("model", ["vae", "vae-conv", "vae-subpixel"])
def test_the_scorer_stays_finite_where_log_sigmoid_is_minus_infinity(
        model_repo: Path, model: str, request: pytest.FixtureRequest) -> None:
    """Latents far out in the prior's tail saturate the decoder; ONNX Runtime's Log(Sigmoid)
    gives -inf there (its sigmoid is 0 below about -20), the scorer a finite number."""
    fixture = {"vae": "digits_run", "vae-conv": "digits_conv_run",
               "vae-subpixel": "digits_subpixel_run"}[model]
    run = load_run(request.getfixturevalue(fixture))
    rng = np.random.default_rng(0)
    z = 100 * rng.standard_normal((256, 8), dtype=np.float32)
    x = (rng.random((256, 1, 8, 8)) > 0.5).astype(np.float32)
    with torch.no_grad():
        logits = run.model.decode(torch.from_numpy(z)).numpy()
        expected = ScorerGraph(run.model)(torch.from_numpy(z), torch.from_numpy(x)).numpy()
    assert np.isneginf(_ort_log_sigmoid(np.concatenate([logits, -logits]))).any()
    scorer = ort.InferenceSession(str(model_repo / model / "1" / "scorer.onnx"),
                                  providers=["CPUExecutionProvider"])
    (log_px_z,) = scorer.run(["log_px_z"], {"z": z, "x": x})
    assert np.all(np.isfinite(log_px_z)) and np.all(log_px_z <= 0)
    np.testing.assert_allclose(log_px_z, expected, rtol=1e-6, atol=verify.SCORER_TOLERANCE)


def test_manifest_records_provenance(model_repo: Path) -> None:
    manifest = read_manifest(model_repo / "vae" / "1")
    assert (manifest.version, manifest.image_shape, manifest.latent_dim) == (1, (1, 8, 8), 8)
    assert manifest.training["dataset"] == "digits" and manifest.training["noise"] == "gaussian:0.2"
    assert set(manifest.versions) == {"torch", "onnx", "onnxruntime"} and manifest.opset >= 18
    assert manifest.created.endswith("+00:00")


def test_check_accepts_a_published_version(model_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", str(model_repo / "vae" / "1")]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "graphs encoder, decoder, scorer)" in out


@pytest.mark.parametrize("graph", ["decoder.onnx", "scorer.onnx"])
def test_flipped_byte_fails_check_naming_file_and_hashes(model_repo: Path, tmp_path: Path,
                                                         graph: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    copy = shutil.copytree(model_repo / "vae" / "1", tmp_path / "1")
    blob = bytearray((copy / graph).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / graph).write_bytes(bytes(blob))
    assert main(["--check", str(copy)]) == 2
    err = capsys.readouterr().err
    expected = read_manifest(copy).sha256[graph]
    assert f"{graph}: sha256 " in err and f"manifest's {expected}" in err


def test_check_runs_the_scorer(model_repo: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """A scorer that answers log p(x | z) > 0 (here: the encoder's mean) fails the smoke run."""
    copy = shutil.copytree(model_repo / "vae" / "1", tmp_path / "1")
    (copy / "scorer.onnx").write_bytes(_scorer_of_positive_sums(copy / "scorer.onnx"))
    data = json.loads((copy / "manifest.json").read_text())
    data["sha256"]["scorer.onnx"] = sha256_file(copy / "scorer.onnx")
    (copy / "manifest.json").write_text(json.dumps(data))
    assert main(["--check", str(copy)]) == 1
    assert "scorer log_px_z" in capsys.readouterr().err


def _scorer_of_positive_sums(path: Path) -> bytes:
    """The scorer with its output negated: right names and shapes, wrong sign."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    (output,) = graph.output
    for node in graph.node:
        node.output[:] = ["log_px_z_raw" if o == output.name else o for o in node.output]
    graph.node.append(helper.make_node("Neg", ["log_px_z_raw"], [output.name]))
    return bytes(model.SerializeToString())


def test_check_accepts_a_version_without_a_scorer(model_repo: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    copy = as_schema_1(shutil.copytree(model_repo / "vae" / "1", tmp_path / "1"))
    assert main(["--check", str(copy)]) == 0
    assert "graphs encoder, decoder)" in capsys.readouterr().out


def test_failure_midway_leaves_no_version_folder(digits_run: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "parity_errors",
                        lambda *a: {"mean": 0, "log_var": 0, "x_hat": 0, "log_px_z": 0.5})
    assert main([str(digits_run), "--repo", str(tmp_path)]) == 1
    assert list((tmp_path / "vae").iterdir()) == []


def test_export_picks_next_version_and_never_overwrites(digits_run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(digits_run), "--repo", str(tmp_path), "--version", "3"]) == 0
    assert main([str(digits_run), "--repo", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["3", "4"]
    assert main([str(digits_run), "--repo", str(tmp_path), "--version", "4"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_export_needs_only_the_run_folder(digits_run: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = shutil.copytree(digits_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config.update(dataset="mnist", data_dir=str(tmp_path / "gone"))
    (run / "config.json").write_text(json.dumps(config))
    assert main([str(run), "--repo", str(tmp_path / "m")]) == 0
    (run / "parity_images.npy").unlink()
    assert main([str(run), "--repo", str(tmp_path / "m")]) == 2
    assert "--data-dir" in capsys.readouterr().err  # an option vae-export has
    assert "--data-dir" in build_parser().format_help()


def test_a_different_image_shape_or_latent_needs_a_new_model_name(model_repo: Path, digits_run: Path,
                                                                 tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    published = shutil.copytree(model_repo / "vae" / "1", tmp_path / "m" / "vae" / "1")
    manifest = json.loads((published / "manifest.json").read_text())
    manifest["latent_dim"] = 16
    (published / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(digits_run), "--repo", str(tmp_path / "m")]) == 2
    assert "--model NAME" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "m" / "vae").iterdir()) == ["1"]
    assert main([str(digits_run), "--repo", str(tmp_path / "m"), "--model", "digits"]) == 0


def _broken_run(kind: str, digits_run: Path, tmp_path: Path) -> Path:
    run = shutil.copytree(digits_run, tmp_path / "run")
    if kind == "no-weights":
        (run / "model.pt").unlink()
    else:
        config = json.loads((run / "config.json").read_text())
        config["model"]["latent_dim"] = 9
        (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.mark.parametrize(("kind", "message"), [
    ("no-weights", "has no model.pt"),
    ("mismatch", "model.pt does not match config.json"),
])
def test_bad_run_folders_exit_2(kind: str, message: str, digits_run: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(_broken_run(kind, digits_run, tmp_path)), "--repo", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_run_and_file_repo_exit_2(digits_run: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope"), "--repo", str(tmp_path)]) == 2
    (tmp_path / "file").write_text("x")
    assert main([str(digits_run), "--repo", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "is a file" in err


def test_manifest_reader_needs_neither_torch_nor_onnx(model_repo: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
        "from pathlib import Path\nfrom service.plane.repository import read_manifest, verify_graphs\n"
        f"folder = Path({str(model_repo / 'vae' / '1')!r})\n"
        "m = read_manifest(folder); verify_graphs(folder, m); print(m.latent_dim)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "8"


def test_invalid_manifest_is_explained(model_repo: Path, tmp_path: Path) -> None:
    from service.plane.repository import ManifestError

    copy = shutil.copytree(model_repo / "vae" / "1", tmp_path / "1")
    data = json.loads((copy / "manifest.json").read_text())
    data["latent_dim"] = "eight"
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="field 'latent_dim' must be an integer"):
        read_manifest(copy)
