"""report.md: the run's numbers as a table a person reads, beside its pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.pictures import DENOISING, RECONSTRUCTIONS, SAMPLES, SHOWN_NOISE

REPORT = "report.md"
NAN = float("nan")


def _likelihood_note(config: dict[str, Any]) -> str:
    if config["binarize"]:
        return ("The model was trained on binarised images, so the IWAE number is an estimate of "
                "its negative log-likelihood, comparable with published binarised-MNIST results.")
    return ("The model was trained on grayscale images (no `--binarize`): the IWAE number scores "
            "binarised images it never saw in training, so it is not a likelihood to compare "
            "with published results; train with `--binarize` for that.")


def _denoising_note(config: dict[str, Any]) -> str:
    if config["noise"] == "none":
        return (f"This model was trained on clean images, not to denoise; `{DENOISING}` shows "
                f"it on {SHOWN_NOISE} inputs anyway (the noise is named in the picture).")
    return f"This model was trained to denoise: its inputs had `{config['noise']}` noise."


def render_report(config: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Markdown with the headline losses, the likelihood and the PSNR table, each explained."""
    model = config["model"]
    ev = metrics.get("evaluation", {})
    test_images = ev.get("test_images", "all")
    iwae_s = ev.get("iwae_seconds")
    timing = (f" It took {iwae_s:.0f} s ({ev['iwae_images'] / iwae_s:.1f} images/s, "
              f"{ev['iwae_images'] * ev['iwae_samples'] / iwae_s:,.0f} decoder passes/s)."
              if iwae_s else "")
    lines = [
        f"# {config['dataset']} / {model['arch']} (latent {model['latent_dim']})",
        "",
        f"Trained {config['epochs']} epochs, batch {config['batch_size']}, Adam lr {config['lr']} "
        f"({config.get('lr_schedule', 'constant')}), seed {config['seed']}, noise "
        f"{config['noise']}, binarised: {config['binarize']}, "
        f"{metrics.get('seconds_per_epoch', 0):.1f} s/epoch on {config['device']}.",
        "",
        "| metric (on the test split) | value | better | test images |",
        "|---|---|---|---|",
        f"| test loss: BCE + KL per image, z sampled (nats) | "
        f"{ev.get('test_loss', NAN):.2f} | lower | {test_images} |",
        f"| -ELBO on binarised test images (nats) | "
        f"{ev.get('binarized_test_elbo_nll', NAN):.2f} | lower | {ev.get('iwae_images')} |",
        f"| NLL, IWAE bound with k={ev.get('iwae_samples')} on binarised test images (nats) "
        f"| {ev.get('iwae_nll', NAN):.2f} ± {ev.get('iwae_nll_stderr', 0):.2f} | lower | "
        f"{ev.get('iwae_images')} |",
        "",
        "± is the standard error of the mean over test images (the spread of the per-image "
        "values divided by the square root of their number), not a spread between runs. "
        + _likelihood_note(config) + timing,
        "",
        "PSNR against the clean test image (dB, mean over all test images; higher is better). "
        "Each row corrupts the test images as named, then compares with the clean ones: the "
        "noisy input itself, a 3x3 median filter, PCA with as many components as the latent "
        "size, and the VAE's decode(mean of encode(x)). " + _denoising_note(config),
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
        f"Samples from the prior (`{SAMPLES}`), test images beside their reconstructions "
        f"(`{RECONSTRUCTIONS}`) and noisy / denoised / clean triplets (`{DENOISING}`):",
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
