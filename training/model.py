"""Variational autoencoders with a Gaussian posterior and a Bernoulli decoder (logits out)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from training.errors import UsageError

ARCHS = ("mlp", "conv", "subpixel")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; stored as config.json in the run folder."""

    arch: str = "mlp"
    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 20
    hidden_dim: int = 400
    """Width of the MLP hidden layer, or of the conv model's dense layer."""
    channels: int = 32
    """conv: channels of the first convolution (the second has twice as many); subpixel:
    channels of every convolution."""
    decoder_layers: tuple[int, int] = (1, 3)
    """subpixel: 3x3 convolutions (each with batch norm and SiLU) the decoder runs at a
    quarter and at half of the image size, around its first upsampling."""

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "image_shape": list(self.image_shape),
                "decoder_layers": list(self.decoder_layers)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelConfig:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fields["image_shape"] = _int_tuple(fields.get("image_shape", cls.image_shape))
        # Runs written before decoder_layers existed had one layer at half size.
        fields["decoder_layers"] = _int_tuple(fields.get("decoder_layers", LEGACY_DECODER_LAYERS))
        return cls(**fields)  # type: ignore[arg-type]


def _int_tuple(value: object) -> tuple[int, ...]:
    """A JSON list (or a default tuple) as the tuple of ints the dataclass holds."""
    assert isinstance(value, list | tuple)
    return tuple(int(v) for v in value)


LEGACY_DECODER_LAYERS = (0, 1)
"""decoder_layers of a config.json that does not name them (written before the field)."""


def parse_decoder_layers(text: str) -> tuple[int, int]:
    """'1,2' -> (1, 2): the --decoder-layers flag."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--decoder-layers takes two counts, QUARTER,HALF such as 1,2; got {text!r}")
    quarter, half = (int(p) for p in parts)
    return quarter, half


class VAE(nn.Module):
    """Encoder -> (mean, log_var); decoder -> Bernoulli logits, as in Kingma & Welling (2014)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.config = config

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.encoder(x)
        return mean, log_var

    @staticmethod
    def reparameterize(
        mean: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z = mean + sigma * eps: differentiable in mean and log_var (the reparameterisation)."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * log_var) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits with the image shape; apply a sigmoid for pixel probabilities."""
        logits: torch.Tensor = self.decoder(z)
        return logits

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_var = self.encode(x)
        z = self.reparameterize(mean, log_var, generator)
        return self.decode(z), mean, log_var


class _GaussianHeads(nn.Module):
    """Separate linear heads for the posterior mean and log-variance."""

    def __init__(self, body: nn.Module, features: int, latent_dim: int) -> None:
        super().__init__()
        self.body = body
        self.mean = nn.Linear(features, latent_dim)
        self.log_var = nn.Linear(features, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mean(h), self.log_var(h)


def _mlp(config: ModelConfig) -> VAE:
    c, h, w = config.image_shape
    pixels = c * h * w
    body = nn.Sequential(nn.Flatten(), nn.Linear(pixels, config.hidden_dim), nn.ReLU())
    decoder = nn.Sequential(
        nn.Linear(config.latent_dim, config.hidden_dim),
        nn.ReLU(),
        nn.Linear(config.hidden_dim, pixels),
        nn.Unflatten(1, (c, h, w)),
    )
    return VAE(_GaussianHeads(body, config.hidden_dim, config.latent_dim), decoder, config)


def _conv(config: ModelConfig) -> VAE:
    """Two stride-2 stages each way plus a full-resolution 3x3 layer at both ends."""
    c, h, w = config.image_shape
    if h % 4 or w % 4:
        raise UsageError(f"arch conv needs height and width divisible by 4, got {h}x{w}")
    c1, c2 = config.channels, 2 * config.channels
    grid = (c2, h // 4, w // 4)
    flat = c2 * (h // 4) * (w // 4)
    body = nn.Sequential(
        nn.Conv2d(c, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c1, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(flat, config.hidden_dim),
        nn.ReLU(),
    )
    decoder = nn.Sequential(
        nn.Linear(config.latent_dim, config.hidden_dim),
        nn.ReLU(),
        nn.Linear(config.hidden_dim, flat),
        nn.ReLU(),
        nn.Unflatten(1, grid),
        nn.ConvTranspose2d(c2, c2, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c, 3, padding=1),
    )
    return VAE(_GaussianHeads(body, config.hidden_dim, config.latent_dim), decoder, config)


def _upsample(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution to 4x the channels, then depth-to-space: twice the height and width.

    Sub-pixel convolution (Shi et al. 2016): the same output size as a stride-2 transposed
    convolution, but ONNX Runtime runs it as a plain Conv plus DepthToSpace, several times
    faster on CPU than ConvTranspose.
    """
    return nn.Sequential(nn.Conv2d(in_channels, 4 * out_channels, 3, padding=1),
                         nn.PixelShuffle(2))


def _conv_bn_silu(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1
                  ) -> list[nn.Module]:
    """Convolution (padding 1), batch norm, SiLU: spread into a Sequential, so state_dict
    keys stay flat indices."""
    return [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=1),
            nn.BatchNorm2d(out_channels), nn.SiLU()]


def _subpixel(config: ModelConfig) -> VAE:
    """The conv encoder's shape with batch norm and SiLU; a decoder of sub-pixel convolutions
    with config.decoder_layers 3x3 layers at a quarter and half of the image size and none at
    full size, where a conv decoder spends most of its time. Batch norm folds into the
    convolutions on export.
    """
    c, h, w = config.image_shape
    if h % 4 or w % 4:
        raise UsageError(f"arch subpixel needs height and width divisible by 4, got {h}x{w}")
    k = config.channels
    quarter, half = config.decoder_layers
    grid = (k, h // 4, w // 4)
    flat = k * (h // 4) * (w // 4)
    body = nn.Sequential(
        *_conv_bn_silu(c, k),
        *_conv_bn_silu(k, k, kernel=4, stride=2),
        *_conv_bn_silu(k, k, kernel=4, stride=2),
        nn.Flatten(),
        nn.Linear(flat, config.hidden_dim), nn.SiLU(),
    )
    decoder = nn.Sequential(
        nn.Linear(config.latent_dim, config.hidden_dim), nn.SiLU(),
        nn.Linear(config.hidden_dim, flat), nn.SiLU(),
        nn.Unflatten(1, grid),
        *[layer for _ in range(quarter) for layer in _conv_bn_silu(k, k)],
        _upsample(k, k), nn.BatchNorm2d(k), nn.SiLU(),
        *[layer for _ in range(half) for layer in _conv_bn_silu(k, k)],
        _upsample(k, c),
    )
    return VAE(_GaussianHeads(body, config.hidden_dim, config.latent_dim), decoder, config)


def build_model(config: ModelConfig) -> VAE:
    """Build an untrained model of `config.arch`; weights come from torch's default init."""
    builders = {"mlp": _mlp, "conv": _conv, "subpixel": _subpixel}
    if config.arch not in builders:
        raise UsageError(f"arch {config.arch!r} is unknown; choose one of {', '.join(ARCHS)}")
    return builders[config.arch](config)
