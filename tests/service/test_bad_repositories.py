"""A repository with no good version stops the server with one line naming the file, and
exit 2; a bad newest version is refused, and the server starts on the newest good one."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.plane.repository import sha256_file
from tests.conftest import ROOT, StartServer


def _manifest(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    return data


def _rewrite_hashes(folder: Path) -> None:
    """Make the manifest match the (broken) graphs, so only the graph check can catch them."""
    data = _manifest(folder)
    data["sha256"] = {name: sha256_file(folder / name) for name in data["sha256"]}
    (folder / "manifest.json").write_text(json.dumps(data))


def _unknown_key(folder: Path) -> None:
    (folder / "manifest.json").write_text(json.dumps({**_manifest(folder), "colour": "blue"}))


def _not_utf8(folder: Path) -> None:
    (folder / "manifest.json").write_bytes(b'{"model_name": "\xff\xfe"}')


def _graph_bytes(content: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        graph = folder / "decoder.onnx"
        graph.write_bytes(content(graph.read_bytes()))
        _rewrite_hashes(folder)
    return breaker


def _swapped(folder: Path) -> None:
    encoder, decoder = (folder / "encoder.onnx").read_bytes(), (folder / "decoder.onnx").read_bytes()
    (folder / "encoder.onnx").write_bytes(decoder)
    (folder / "decoder.onnx").write_bytes(encoder)
    _rewrite_hashes(folder)


def _scorer_is_the_decoder(folder: Path) -> None:
    (folder / "scorer.onnx").write_bytes((folder / "decoder.onnx").read_bytes())
    _rewrite_hashes(folder)


def _decoder_of_latent_5(folder: Path) -> None:
    """A real decoder graph z [N, 5] -> x_hat [N, 1, 8, 8]; encoder and manifest say latent 8."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.zeros((5, 64), np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["z", "w"], ["h"]), helper.make_node("Sigmoid", ["h"], ["p"]),
         helper.make_node("Reshape", ["p", "shape"], ["x_hat"])], "decoder",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("x_hat", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [weights, shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
              folder / "decoder.onnx")
    _rewrite_hashes(folder)


UNLOADABLE = "decoder.onnx: ONNX Runtime cannot load"
CASES = {
    "unknown manifest key": (_unknown_key, "manifest.json: unknown key 'colour'"),
    "manifest not UTF-8": (_not_utf8, "manifest.json: not readable UTF-8 JSON"),
    "graph not ONNX": (_graph_bytes(lambda b: b"this is not onnx" * 10), UNLOADABLE),
    "empty graph": (_graph_bytes(lambda b: b""), UNLOADABLE),
    "truncated graph": (_graph_bytes(lambda b: b[: len(b) // 2]), UNLOADABLE),
    "graphs swapped": (_swapped, "encoder.onnx has tensors ['z']"),
    "scorer of another signature": (_scorer_is_the_decoder,
                                    "scorer.onnx has tensors ['z']; the manifest states ['x', 'z']"),
    "decoder of another latent size": (_decoder_of_latent_5,
                                       "decoder.onnx: z has dimensions ['batch', 5]"),
}


def _serve(repo: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", "--model-repo", str(repo),
                           "--port", "0", "--metrics-port", "-1", *flags], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_repository_is_one_line_and_exit_2(model_repo: Path, tmp_path: Path, case: str) -> None:
    breaker, message = CASES[case]
    repo = tmp_path / "models"
    shutil.copytree(model_repo / "vae", repo / "vae")
    breaker(repo / "vae" / "1")
    done = _serve(repo)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr and str(repo / "vae" / "1") in done.stderr


def _with_odd_folders(model_repo: Path, tmp_path: Path) -> Path:
    """vae/1 beside folders that are no versions: `²` passes str.isdigit, `002` reads as 2."""
    repo = tmp_path / "models"
    shutil.copytree(model_repo / "vae" / "1", repo / "vae" / "1")
    for name in ("²", "002", "-1", "1e3"):
        shutil.copytree(model_repo / "vae" / "1", repo / "vae" / name)
    return repo


async def test_a_server_starts_beside_odd_folders(model_repo: Path, tmp_path: Path,
                                                  start_server: StartServer) -> None:
    running = await start_server(model_repo=_with_odd_folders(model_repo, tmp_path))
    assert running.plane.current.number == 1


def test_vae_export_publishes_beside_odd_folders(model_repo: Path, digits_run: Path,
                                                 tmp_path: Path) -> None:
    repo = _with_odd_folders(model_repo, tmp_path)
    done = subprocess.run([sys.executable, "-m", "export.cli", str(digits_run), "--repo", str(repo)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert (repo / "vae" / "2" / "manifest.json").is_file()


def bad_newest(model_repo: Path, tmp_path: Path) -> Path:
    """A repository of vae/1 and vae/2, a copy of it whose decoder lost a byte after export."""
    repo = tmp_path / "models"
    shutil.copytree(model_repo / "vae" / "1", repo / "vae" / "1")
    bad = shutil.copytree(repo / "vae" / "1", repo / "vae" / "2")
    (bad / "manifest.json").write_text(json.dumps({**_manifest(bad), "version": 2}))
    blob = bytearray((bad / "decoder.onnx").read_bytes())
    blob[-10] ^= 0xFF
    (bad / "decoder.onnx").write_bytes(bytes(blob))
    return repo


async def test_a_bad_newest_version_is_refused_and_the_older_good_one_serves(
        start_server: StartServer, model_repo: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    running = await start_server(model_repo=bad_newest(model_repo, tmp_path), metrics_port=0)
    await running.watcher.rescan()  # not tried again while its files are unchanged
    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    scraped = urllib.request.urlopen(url, timeout=5).read().decode()
    assert running.plane.current.number == 1
    assert 'vae_model_loads_total{result="refused"} 1.0' in scraped
    assert "refused" in caplog.text and "vae/2/decoder.onnx: sha256" in caplog.text


def test_a_pinned_bad_version_or_no_good_one_stops_the_start(model_repo: Path,
                                                             tmp_path: Path) -> None:
    repo = bad_newest(model_repo, tmp_path)
    pinned = _serve(repo, "--model-version", "2")  # the operator asked for exactly that one
    _unknown_key(repo / "vae" / "1")
    none_good = _serve(repo)
    for done in (pinned, none_good):  # the newest version's reason
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "vae/2/decoder.onnx: sha256" in done.stderr
