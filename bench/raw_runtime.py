"""Raw ONNX Runtime through the server's own OrtRunner: batch 1 and 64, with and without I/O binding.

python -m bench.raw_runtime --repo models --model vae --device cuda --seconds 2

The ceiling a serving benchmark compares against, on the device the server would use; the
I/O-binding column is the path the server takes on CUDA. About 8 x --seconds. Prints a
markdown table. On CPU it runs too (the binding then binds CPU memory).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.help_format import DefaultsHelpFormatter
from service.plane.repository import GRAPHS, read_manifest, resolve_version, row_shapes
from service.runtime.ort_runner import OrtRunner, pack_rows

BATCH_SIZES = (1, 64)


def items_per_s(run: Callable[[np.ndarray], object], batch: np.ndarray, seconds: float) -> float:
    """Closed loop of run(batch) for about `seconds` after one warm-up call; items (rows)/s."""
    run(batch)  # warm-up: allocations, kernels, CUDA context
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - started)


def session_run(session: ort.InferenceSession) -> Callable[[np.ndarray], object]:
    """run(batch) for a plain InferenceSession with one input, for items_per_s."""
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> object:
        return session.run(None, {name: batch})
    return run


def measure(repo: Path, model: str, device: str, seconds: float) -> str:
    folder = resolve_version(repo, model, 0)
    manifest = read_manifest(folder)
    lines = [f"Raw ONNX Runtime items/s, {model} v{manifest.version}, --device {device}:", "",
             "| graph | batch | plain run | I/O binding | provider |", "|---|---|---|---|---|"]
    rng = np.random.default_rng(0)
    for graph in manifest.graphs:
        inputs, _ = row_shapes(graph, manifest.image_shape, manifest.latent_dim)
        runners = {bound: OrtRunner(folder / GRAPHS[graph].file, device, 0, list(inputs),
                                    manifest.outputs[graph], io_binding=bound)
                   for bound in (False, True)}
        for n in BATCH_SIZES:
            batch = pack_rows(*(rng.random((n, *shape), dtype=np.float32)
                                for shape in inputs.values()))
            plain, bound = (items_per_s(runners[b].run, batch, seconds) for b in (False, True))
            lines.append(f"| {graph} | {n} | {plain:.0f} | {bound:.0f} | "
                         f"{runners[True].provider} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.raw_runtime", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    p.add_argument("--model", default="vae", help="model name; its newest version is used")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="execution provider")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each measurement")
    args = p.parse_args(argv)
    print(measure(args.repo, args.model, args.device, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
