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
