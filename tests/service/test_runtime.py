"""The I/O-binding path (what CUDA uses) gives the plain path's bytes, here on CPU."""

from pathlib import Path

import numpy as np
import pytest

from service.runtime import OrtRunner


@pytest.mark.parametrize(("graph", "feed", "outputs"), [
    ("encoder.onnx", "x", ["mean", "log_var"]),
    ("decoder.onnx", "z", ["x_hat"]),
])
def test_io_binding_equals_the_plain_run(model_repo: Path, graph: str, feed: str,
                                         outputs: list[str]) -> None:
    path = model_repo / "vae" / "1" / graph
    shape = (5, 1, 8, 8) if feed == "x" else (5, 8)
    batch = np.random.default_rng(0).random(shape, dtype=np.float32)
    plain = OrtRunner(path, "cpu", 1, feed, outputs, io_binding=False).run(batch)
    bound_runner = OrtRunner(path, "cpu", 1, feed, outputs, io_binding=True)
    assert bound_runner.io_binding
    bound = bound_runner.run(batch)
    assert [a.tobytes() for a in plain] == [b.tobytes() for b in bound]


@pytest.mark.parametrize("model", ["vae", "vae-conv", "vae-subpixel"])
@pytest.mark.parametrize(("graph", "feed", "outputs"), [
    ("encoder.onnx", "x", ["mean", "log_var"]),
    ("decoder.onnx", "z", ["x_hat"]),
])
def test_small_batches_on_the_single_threaded_session_give_the_same_bytes(
        model_repo: Path, model: str, graph: str, feed: str, outputs: list[str]) -> None:
    path = model_repo / model / "1" / graph
    threaded = OrtRunner(path, "cpu", 2, feed, outputs)
    split = OrtRunner(path, "cpu", 2, feed, outputs, serial_below_rows=4)
    assert threaded.serial is None and split.serial is not None
    tail = tuple(d for d in split.inputs[feed][1:] if isinstance(d, int))
    batch = np.random.default_rng(0).random((3, *tail), dtype=np.float32)
    expected = threaded.run(batch)
    got = split.run(batch)
    assert [a.tobytes() for a in got] == [b.tobytes() for b in expected]
