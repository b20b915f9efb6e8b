"""Markdown tables from benchmark run folders (bench/train_mnist.sh) for docs/benchmarks.md.

python -m bench.training_report runs/bench [--repo models]

Reads config.json and metrics.json of every run folder (and, with --repo, the manifests and
graph sizes of every published version); prints the tables in a second or two.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return (json.loads((folder / "config.json").read_text()),
            json.loads((folder / "metrics.json").read_text()))


def runs_table(folders: list[Path]) -> list[str]:
    lines = ["| run | dataset | arch (latent) | epochs | noise | binarised | test loss | "
             "IWAE NLL (k, images) | s/epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for folder in folders:
        config, metrics = _read(folder)
        ev = metrics["evaluation"]
        lines.append(
            f"| {folder.name} | {config['dataset']} | {config['model']['arch']} "
            f"({config['model']['latent_dim']}) | {config['epochs']} | {config['noise']} | "
            f"{config['binarize']} | {ev['test_loss']:.2f} | {ev['iwae_nll']:.2f} ± "
            f"{ev['iwae_nll_stderr']:.2f} (k={ev['iwae_samples']}, {ev['iwae_images']}) | "
            f"{metrics['seconds_per_epoch']:.1f} |")
    return lines


def psnr_table(folder: Path) -> list[str]:
    _, metrics = _read(folder)
    lines = [f"PSNR (dB) of `{folder.name}` against the clean test images:", "",
             "| input | noisy | median 3x3 | PCA (same latent dim) | VAE |", "|---|---|---|---|---|"]
    for condition, row in metrics["evaluation"]["psnr"].items():
        cells = [row.get(k) for k in ("noisy", "median3x3", "pca", "vae")]
        lines.append(f"| {condition} | " + " | ".join("-" if v is None else f"{v:.2f}"
                                                      for v in cells) + " |")
    return lines


def graph_sizes(repo: Path) -> list[str]:
    lines = ["| model/version | arch | image | latent | encoder.onnx | decoder.onnx |",
             "|---|---|---|---|---|---|"]
    for manifest_path in sorted(repo.glob("*/[0-9]*/manifest.json")):
        m = json.loads(manifest_path.read_text())
        folder = manifest_path.parent
        kib = [(folder / f).stat().st_size / 1024 for f in ("encoder.onnx", "decoder.onnx")]
        lines.append(f"| {m['model_name']}/{m['version']} ({m['training']['dataset']}) | "
                     f"{m['arch']} | {m['image_shape']} | {m['latent_dim']} | {kib[0]:.0f} KiB | "
                     f"{kib[1]:.0f} KiB |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.training_report", description=__doc__)
    p.add_argument("runs", type=Path)
    p.add_argument("--repo", type=Path, help="also list exported graph sizes in this repository")
    args = p.parse_args()
    folders = sorted(f for f in args.runs.iterdir() if (f / "metrics.json").exists())
    out = runs_table(folders)
    for folder in folders:
        out += ["", *psnr_table(folder)]
    if args.repo:
        out += ["", *graph_sizes(args.repo)]
    print("\n".join(out))


if __name__ == "__main__":
    main()
