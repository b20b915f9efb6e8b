"""VaeModel: encode, decode, sample and denoise on ndarrays, over one batcher per graph.

It knows nothing of gRPC: the vae.v1 servicer and a later KServe v2 front both call it.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

import numpy as np

from service.batcher import BatchObserver, DynamicBatcher
from service.config import ServerConfig
from service.repository import (
    DECODER,
    ENCODER,
    Manifest,
    read_manifest,
    resolve_version,
    verify_graphs,
)
from service.runtime import OrtRunner

logger = logging.getLogger(__name__)
WARMUP_BATCH_SIZES = (1, 8)
"""Batch sizes run once at start-up (plus max_batch_size) so first requests are not slow."""
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Sampled:
    images: np.ndarray
    latents: np.ndarray
    seed: int


def prior_latents(count: int, latent_dim: int, seed: int, temperature: float) -> np.ndarray:
    """z ~ N(0, temperature^2 I) from the request's own PCG64 stream: same seed, same z, anywhere."""
    z = np.random.Generator(np.random.PCG64(seed)).standard_normal((count, latent_dim),
                                                                   dtype=np.float32)
    return z * np.float32(temperature)


class VaeModel:
    """One served model version: its manifest, two runners and two batchers."""

    def __init__(self, manifest: Manifest, encoder: OrtRunner, decoder: OrtRunner,
                 encoder_batcher: DynamicBatcher, decoder_batcher: DynamicBatcher) -> None:
        self.manifest = manifest
        self.provider = decoder.provider
        self._encoder_runner, self._decoder_runner = encoder, decoder
        self._encoder, self._decoder = encoder_batcher, decoder_batcher

    @classmethod
    def load(cls, config: ServerConfig, observers: dict[str, BatchObserver]) -> VaeModel:
        """Resolve the version, verify both sha256, create sessions and batchers, warm up."""
        folder = resolve_version(config.model_repo, config.model_name, config.model_version)
        manifest = read_manifest(folder)
        verify_graphs(folder, manifest)
        runners = {name: OrtRunner(folder / file, config.device, config.intra_op_threads)
                   for name, file in (("encoder", ENCODER), ("decoder", DECODER))}
        batchers = {
            name: DynamicBatcher(
                name, runner.run, max_batch_size=config.max_batch_size,
                max_queue_delay_us=config.max_queue_delay_us,
                max_queue_rows=config.max_queue_rows, instances=config.instances,
                observer=observers.get(name),
            )
            for name, runner in runners.items()
        }
        model = cls(manifest, runners["encoder"], runners["decoder"], batchers["encoder"],
                    batchers["decoder"])
        model.warm_up(config.max_batch_size)
        return model

    @property
    def folder_name(self) -> str:
        return f"{self.manifest.model_name}/{self.manifest.version}"

    def warm_up(self, max_batch_size: int) -> None:
        started = time.monotonic()
        for n in sorted({*WARMUP_BATCH_SIZES, max_batch_size}):
            self._encoder_runner.run(np.zeros((n, *self.manifest.image_shape), np.float32))
            self._decoder_runner.run(np.zeros((n, self.manifest.latent_dim), np.float32))
        logger.info("warmed up %s in %.2f s", self.folder_name, time.monotonic() - started)

    async def encode(self, images: np.ndarray, deadline_s: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        mean, log_var = await self._encoder.submit(images, deadline_s)
        return mean, log_var

    async def decode(self, latents: np.ndarray, deadline_s: float | None = None) -> np.ndarray:
        (images,) = await self._decoder.submit(latents, deadline_s)
        return images

    async def sample(self, count: int, seed: int, temperature: float,
                     deadline_s: float | None = None) -> Sampled:
        """Seed 0 means: pick one (returned, so the draw can be repeated)."""
        seed = seed or secrets.randbelow(MAX_SEED) + 1
        latents = prior_latents(count, self.manifest.latent_dim, seed, temperature)
        return Sampled(await self.decode(latents, deadline_s), latents, seed)

    async def denoise(self, images: np.ndarray, deadline_s: float | None = None) -> np.ndarray:
        """decode(posterior mean): the most likely clean image under the model."""
        mean, _ = await self.encode(images, deadline_s)
        return await self.decode(mean, deadline_s)

    async def close(self) -> None:
        await self._encoder.close()
        await self._decoder.close()
