"""What each MNIST model costs to serve: parameters and raw ONNX Runtime encoder and decoder
throughput at batch 1 and 64, all measured in one run (the serving benchmark's ceilings).

python -m bench.model_cost --seconds 2 --out bench/out/model-cost.md

Builds each configuration of CONFIGS untrained (throughput does not depend on the weights),
exports it with vae-export's own exporter to a temporary folder, and runs each graph on the
CPU in a closed loop for --seconds per batch size. The last column compares each decoder's
best batch with the conv decoder's best. About 2 x 3 x --seconds per model plus the
exports: about a minute at --seconds 3.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from bench.raw_runtime import items_per_s, session_run
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
BATCH_SIZES = (1, 64, 256)
BASELINE = next(iter(k for k in CONFIGS if k.startswith("conv")))
"""The decoder the default replaced: the speed-up column compares with its best batch."""


def measure(seconds: float) -> list[str]:
    rng = np.random.default_rng(0)
    rows: dict[str, tuple[int, dict[tuple[str, int], float]]] = {}
    for name, config in tqdm(CONFIGS.items(), desc="models", unit="model"):
        model = build_model(config)
        with tempfile.TemporaryDirectory() as folder:
            encoder, decoder = export_graphs(model, Path(folder))
            inputs = {"decoder": (decoder, (config.latent_dim,)),
                      "encoder": (encoder, config.image_shape)}
            rates = {}
            for graph, (path, shape) in inputs.items():
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for n in BATCH_SIZES:
                    batch = rng.random((n, *shape), dtype=np.float32)
                    rates[graph, n] = items_per_s(session_run(session), batch, seconds)
        rows[name] = (sum(p.numel() for p in model.parameters()), rates)

    def best_decoder(name: str) -> float:
        return max(v for (graph, _), v in rows[name][1].items() if graph == "decoder")

    header = " | ".join(f"{graph} batch {n}" for graph in ("decoder", "encoder")
                        for n in BATCH_SIZES)
    lines = [f"| model | parameters | {header} | decoder best vs conv |",
             "|---|---|" + "---|" * (2 * len(BATCH_SIZES) + 1)]
    for name, (parameters, rates) in rows.items():
        cells = " | ".join(f"{v:,.0f}" for v in rates.values())
        speedup = best_decoder(name) / best_decoder(BASELINE)
        lines.append(f"| {name} | {parameters:,} | {cells} | {speedup:.1f}x |")
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
