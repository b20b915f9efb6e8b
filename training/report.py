"""report.md: the run's numbers as a table a person reads, beside its pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.pictures import DENOISING, RECONSTRUCTIONS, SAMPLES

REPORT = "report.md"


def render_report(config: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Markdown with the headline losses, the likelihood and the PSNR table."""
    model = config["model"]
    ev = metrics.get("evaluation", {})
    lines = [
        f"# {config['dataset']} / {model['arch']} (latent {model['latent_dim']})",
        "",
        f"Trained {config['epochs']} epochs, batch {config['batch_size']}, Adam lr {config['lr']}, "
        f"seed {config['seed']}, noise {config['noise']}, binarised: {config['binarize']}, "
        f"{metrics.get('seconds_per_epoch', 0):.1f} s/epoch on {config['device']}.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| test loss (BCE + KL per image, z sampled) | {ev.get('test_loss', float('nan')):.2f} |",
        f"| -ELBO on binarised test images | {ev.get('binarized_test_elbo_nll', float('nan')):.2f} |",
        f"| NLL, IWAE k={ev.get('iwae_samples')} on {ev.get('iwae_images')} binarised test images "
        f"| {ev.get('iwae_nll', float('nan')):.2f} ± {ev.get('iwae_nll_stderr', 0):.2f} |",
        "",
        "PSNR against the clean test image (dB, mean over images):",
        "",
        "| input | noisy | median 3x3 | PCA (same latent dim) | VAE |",
        "|---|---|---|---|---|",
    ]
    for condition, row in ev.get("psnr", {}).items():
        cells = [row.get(k) for k in ("noisy", "median3x3", "pca", "vae")]
        text = " | ".join("-" if v is None else f"{v:.2f}" for v in cells)
        lines.append(f"| {condition} | {text} |")
    lines += [
        "",
        f"![samples]({SAMPLES}) ![reconstructions]({RECONSTRUCTIONS}) "
        f"![noisy, denoised, clean]({DENOISING})",
        "",
    ]
    return "\n".join(lines)


def write_report(folder: Path, config: dict[str, Any], metrics: dict[str, Any]) -> Path:
    path = folder / REPORT
    path.write_text(render_report(config, metrics))
    return path
