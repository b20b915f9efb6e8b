"""Input corruption for denoising training and evaluation: 'none', 'gaussian:S', 'salt-pepper:P'."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from training.errors import UsageError

KINDS = ("none", "gaussian", "salt-pepper")


@dataclass(frozen=True)
class Noise:
    """A corruption: Gaussian with std `level` (clipped to [0, 1]) or salt-and-pepper rate."""

    kind: str = "none"
    level: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Noise:
        """Parse 'gaussian:0.3' style specs; a bad spec raises UsageError saying what is valid."""
        if spec == "none":
            return cls()
        kind, _, level_text = spec.partition(":")
        try:
            level = float(level_text)
        except ValueError:
            level = -1.0
        if kind not in KINDS[1:] or not 0.0 < level <= 1.0:
            raise UsageError(
                f"noise {spec!r} is invalid; use 'none', 'gaussian:SIGMA' or "
                "'salt-pepper:RATE' with a level in (0, 1], e.g. gaussian:0.3"
            )
        return cls(kind, level)

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}:{self.level:g}"

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return a corrupted copy in [0, 1]; draws only from `generator`, so it is repeatable."""
        if self.kind == "gaussian":
            noise = _draw(torch.randn, images, generator)
            return (images + self.level * noise).clamp(0.0, 1.0)
        if self.kind == "salt-pepper":
            hit = _draw(torch.rand, images, generator) < self.level
            salt = (_draw(torch.rand, images, generator) < 0.5).to(images.dtype)
            return torch.where(hit, salt, images)
        return images


def _draw(
    sampler: Callable[..., torch.Tensor], like: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Draw on the generator's device, then move: the same seed gives the same noise anywhere."""
    return sampler(like.shape, generator=generator, device=generator.device).to(like.device)
