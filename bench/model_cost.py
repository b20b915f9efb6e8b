"""What each MNIST model costs to serve: parameters and raw ONNX Runtime encoder and decoder
throughput at batch 1, 64 and 256, all measured in one run (the serving benchmark's ceilings).

python -m bench.model_cost --seconds 2 --rounds 3 --out bench/out/model-cost.md

Builds each configuration of CONFIGS untrained (throughput does not depend on the weights),
exports it with vae-export's own exporter to a temporary folder, and runs each graph on the
CPU in a closed loop for --seconds per batch size. --rounds passes over all models, taking
each cell's best, so a noisy neighbour that slows one pass does not tilt the ratios. The
last column compares each decoder's best batch with the conv decoder's best. About
rounds x 2 x 3 x --seconds per model plus the exports: 2.5 minutes at the defaults.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from bench.raw_runtime import items_per_s, session_run
from bench.report import publish
from export.onnx_export import export_graphs
from service.help_format import DefaultsHelpFormatter
from training.model import ModelConfig, build_model

CONFIGS = {
    "mlp (PyTorch example: latent 20, hidden 400)": ModelConfig("mlp", (1, 28, 28), 20, 400),
    "conv (channels 32)": ModelConfig("conv", (1, 28, 28), 32, 512, 32),
    "subpixel32 (channels 32, layers 0,1)": ModelConfig(
        "subpixel", (1, 28, 28), 32, 512, 32, (0, 1)),
    "subpixel (default: channels 16, layers 1,3)": ModelConfig(
        "subpixel", (1, 28, 28), 32, 512, 16, (1, 3)),
}
"""Latent 32 and hidden 512 for all but the mlp."""
BATCH_SIZES = (1, 64, 256)
BASELINE = next(k for k in CONFIGS if k.startswith("conv"))
"""The conv decoder: the speed-up column compares each decoder with its best batch."""


def measure(seconds: float, rounds: int) -> list[str]:
    rng = np.random.default_rng(0)
    counts: dict[str, int] = {}
    sessions: dict[tuple[str, str], tuple[ort.InferenceSession, tuple[int, ...]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for number, (name, config) in enumerate(CONFIGS.items()):
            model = build_model(config)
            counts[name] = sum(p.numel() for p in model.parameters())
            (out := Path(folder) / str(number)).mkdir()
            paths = export_graphs(model, out)
            graphs: list[tuple[str, Path, tuple[int, ...]]] = [
                ("decoder", paths["decoder"], (config.latent_dim,)),
                ("encoder", paths["encoder"], config.image_shape)]
            for graph, path, shape in graphs:
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                sessions[name, graph] = session, shape
    best: dict[str, dict[tuple[str, int], float]] = {name: {} for name in CONFIGS}
    work = [(key, n) for key in sessions for n in BATCH_SIZES]
    with tqdm(total=rounds * len(work), desc="measurements", unit="cell") as bar:
        for _ in range(rounds):
            for (name, graph), n in work:
                session, shape = sessions[name, graph]
                rate = items_per_s(session_run(session), rng.random((n, *shape), dtype=np.float32),
                                   seconds)
                best[name][graph, n] = max(rate, best[name].get((graph, n), 0.0))
                bar.update()
    rows = {name: (counts[name], best[name]) for name in CONFIGS}

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
    p.add_argument("--rounds", type=int, default=3, help="passes over all models; best kept")
    p.add_argument("--out", type=Path, default=Path("bench/out/model-cost.md"))
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1:
        p.error("--seconds must be > 0 and --rounds >= 1")
    command = f"python -m bench.model_cost --seconds {args.seconds:g} --rounds {args.rounds}"
    text = "\n".join([f"Command: `{command}`", "",
                      f"Raw ONNX Runtime items/s (CPU, default threads), one run, best of "
                      f"{args.rounds} rounds:", "", *measure(args.seconds, args.rounds)]) + "\n"
    publish(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
