"""Every training and evaluation setting, its default and its flag: the one place they live."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from service.help_format import DefaultsHelpFormatter
from training.data import DATASETS
from training.errors import UsageError
from training.model import ARCHS, ModelConfig, parse_decoder_layers
from training.noise import Noise

LR_SCHEDULES = ("constant", "onecycle")
REPORT_IWAE_SAMPLES = 5000
"""k of the importance-sampled likelihood in reports (Burda et al. 2015 use 5000)."""
PER_IMAGE_SAMPLES = 100
"""k of `vae-train evaluate --per-image`, per image as Score draws them."""
PER_IMAGE_SEED = 1
"""Seed of the per-image draws; Score's seed 0 means "the server picks", so never 0."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run; written to config.json so the model can be rebuilt and audited."""

    dataset: str = "digits"
    data_dir: Path | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"
    """constant: Adam at lr throughout; onecycle: warm up to lr over the first 10 % of the
    steps, then cosine down to lr/10^4 (Smith & Topin 2017): more from a short run."""
    seed: int = 1
    noise: Noise = field(default_factory=Noise)
    """Corruption of the inputs during training (targets stay clean): a denoising VAE."""
    binarize: bool = False
    """Train on dynamically binarised images (a fresh Bernoulli draw each time)."""
    beta: float = 1.0
    """Weight of the KL term; 1 is the ELBO."""
    kl_warmup_epochs: float = 0.0
    """Epochs over which the KL weight ramps linearly from 0 to beta; 0 = no warm-up."""
    iwae_samples: int = 100
    """k of the importance-sampled NLL computed at the end of training."""
    eval_images: int = 1000
    """Test images used for the importance-sampled NLL (it costs k decoder passes per image)."""
    out: Path = Path("runs/digits-mlp")
    device: str = "cpu"

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.lr_schedule in LR_SCHEDULES,
             f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule}"),
            (self.model.latent_dim >= 1, f"--latent-dim must be >= 1, got {self.model.latent_dim}"),
            (self.model.hidden_dim >= 1, f"--hidden-dim must be >= 1, got {self.model.hidden_dim}"),
            (self.model.channels >= 1, f"--channels must be >= 1, got {self.model.channels}"),
            (self.beta >= 0, f"--beta must be >= 0, got {self.beta}"),
            (self.kl_warmup_epochs >= 0, "--kl-warmup-epochs must be >= 0"),
            (self.iwae_samples >= 1, f"--iwae-samples must be >= 1, got {self.iwae_samples}"),
            (self.eval_images >= 1, f"--eval-images must be >= 1, got {self.eval_images}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.update(
            data_dir=None if self.data_dir is None else str(self.data_dir),
            model=self.model.to_dict(),
            noise=str(self.noise),
            out=str(self.out),
        )
        return data


def build_train_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    m = ModelConfig()
    p = argparse.ArgumentParser(
        prog="vae-train",
        description="Train a VAE and write a run folder (weights, config.json, metrics.json, "
        "PNG pictures, report.md). Evaluate a finished run with: vae-train evaluate RUN",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=DATASETS, default=d.dataset, help="training data")
    p.add_argument("--data-dir", type=Path, help="folder with the gzipped IDX files (mnist, "
                   "fashion-mnist); docs/training.md says where to get them")
    p.add_argument("--arch", choices=ARCHS, default=m.arch, help="encoder/decoder family")
    p.add_argument("--latent-dim", type=int, default=m.latent_dim, help="size of z")
    p.add_argument("--hidden-dim", type=int, default=m.hidden_dim, help="dense layer width")
    p.add_argument("--channels", type=int, default=m.channels,
                   help="conv: first conv channels; subpixel: every conv's channels")
    p.add_argument("--decoder-layers", default=",".join(map(str, m.decoder_layers)),
                   help="subpixel: 3x3 conv layers of the decoder at a quarter and at half "
                   "of the image size, as QUARTER,HALF")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (the peak with onecycle)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="constant, or onecycle: warm-up to --lr then cosine decay, per step")
    p.add_argument("--seed", type=int, default=d.seed, help="same seed, same weights (CPU)")
    p.add_argument("--noise", default=str(d.noise),
                   help="train as a denoising VAE: none, gaussian:SIGMA or salt-pepper:RATE")
    p.add_argument("--binarize", action="store_true", help="dynamically binarise the images")
    p.add_argument("--beta", type=float, default=d.beta, help="KL weight (1 = the ELBO)")
    p.add_argument("--kl-warmup-epochs", type=float, default=d.kl_warmup_epochs,
                   help="ramp the KL weight from 0 over this many epochs")
    p.add_argument("--iwae-samples", type=int, default=d.iwae_samples,
                   help="k of the importance-sampled NLL computed after training")
    p.add_argument("--eval-images", type=int, default=d.eval_images,
                   help="test images used for the importance-sampled NLL")
    p.add_argument("--out", type=Path, help="run folder (default: runs/DATASET-ARCH)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=d.device, help="torch device")
    return p


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Turn parsed flags into a validated TrainConfig (raises UsageError)."""
    model = ModelConfig(
        arch=args.arch,
        latent_dim=args.latent_dim,
        hidden_dim=args.hidden_dim,
        channels=args.channels,
        decoder_layers=parse_decoder_layers(args.decoder_layers),
    )
    return TrainConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        model=model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        seed=args.seed,
        noise=Noise.parse(args.noise),
        binarize=args.binarize,
        beta=args.beta,
        kl_warmup_epochs=args.kl_warmup_epochs,
        iwae_samples=args.iwae_samples,
        eval_images=args.eval_images,
        out=args.out or Path("runs") / f"{args.dataset}-{args.arch}",
        device=args.device,
    )


def build_evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-train evaluate",
        description="Evaluate a run folder on its test split: test loss, importance-sampled "
        "NLL, reconstruction and denoising PSNR beside PCA and a median filter. Updates "
        "metrics.json, report.md and the pictures in the run folder.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("run", type=Path, help="run folder written by vae-train")
    p.add_argument("--data-dir", type=Path, help="override the run's data folder")
    p.add_argument("--iwae-samples", type=int, default=REPORT_IWAE_SAMPLES,
                   help="k of the importance-sampled NLL")
    p.add_argument("--eval-images", type=int, default=TrainConfig.eval_images,
                   help="test images used for the importance-sampled NLL (and --per-image)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device")
    p.add_argument("--per-image", type=Path, metavar="FILE.npz",
                   help="instead of the evaluation, write each binarised test image's neg_elbo, "
                   "reconstruction, kl and nll (nats) as the server's Score computes them")
    p.add_argument("--per-image-samples", type=int, default=PER_IMAGE_SAMPLES,
                   help="importance samples per image for --per-image (Score's samples)")
    p.add_argument("--seed", type=int, default=PER_IMAGE_SEED,
                   help="seed of the --per-image draws (Score's seed; >= 1)")
    return p
