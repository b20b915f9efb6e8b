"""What each MNIST model costs to serve: parameters and raw ONNX Runtime encoder and decoder
throughput at batch 1 and 64, all measured in one run (the serving benchmark's ceilings).

python -m bench.model_cost --seconds 2 --out bench/out/model-cost.md

Builds each configuration of CONFIGS untrained (throughput does not depend on the weights),
exports it with vae-export's own exporter to a temporary folder, and runs each graph on the
CPU in a closed loop for --seconds per batch size. About 2 x 2 x 2 x --seconds per model
plus the exports: under a minute at --seconds 2.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from export.onnx_export import export_graphs
from service.help_format import DefaultsHelpFormatter
from training.model import ModelConfig, build_model

CONFIGS = {
    "mlp (PyTorch example: latent 20, hidden 400)": ModelConfig("mlp", (1, 28, 28), 20, 400),
    "conv (before: latent 32, hidden 512, channels 32)": ModelConfig("conv", (1, 28, 28), 32,
                                                                     512, 32),
    "subpixel (default: latent 32, hidden 512, channels 32)": ModelConfig("subpixel",
                                                                          (1, 28, 28), 32, 512,
                                                                          32),
}
BATCH_SIZES = (1, 64)


def items_per_s(session: ort.InferenceSession, batch: np.ndarray, seconds: float) -> float:
    feed = {session.get_inputs()[0].name: batch}
    session.run(None, feed)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, feed)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - started)


def measure(seconds: float) -> list[str]:
    lines = ["| model | parameters | decoder batch 1 | decoder batch 64 | encoder batch 1 | "
             "encoder batch 64 |", "|---|---|---|---|---|---|"]
    rng = np.random.default_rng(0)
    for name, config in tqdm(CONFIGS.items(), desc="models", unit="model"):
        model = build_model(config)
        parameters = sum(p.numel() for p in model.parameters())
        with tempfile.TemporaryDirectory() as folder:
            encoder, decoder = export_graphs(model, Path(folder))
            sessions = {graph: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                        for graph, path in (("decoder", decoder), ("encoder", encoder))}
            cells = []
            for graph, shape in (("decoder", (config.latent_dim,)),
                                 ("encoder", config.image_shape)):
                for n in BATCH_SIZES:
                    batch = rng.random((n, *shape), dtype=np.float32)
                    cells.append(f"{items_per_s(sessions[graph], batch, seconds):,.0f}")
        lines.append(f"| {name} | {parameters:,} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.model_cost", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0, help="length of each measurement")
    p.add_argument("--out", type=Path, default=Path("bench/out/model-cost.md"))
    args = p.parse_args(argv)
    text = "\n".join([f"Command: `python -m bench.model_cost --seconds {args.seconds:g}`", "",
                      "Raw ONNX Runtime items/s (CPU, default threads), one run:", "",
                      *measure(args.seconds)]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
