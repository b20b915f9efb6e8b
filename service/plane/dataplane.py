"""DataPlane: the served model as a value that can change while traffic flows.

Every front (vae.v1, later KServe v2) calls it with decoded ndarrays. A request leases the
current version for its whole life, so a Denoise never runs its encoder on one version and
its decoder on another; inputs are validated against that version's manifest. `switch`
makes a loaded version current; the old one finishes its leased requests, then closes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from service.batching.batcher import BatchObserver
from service.config import ServerConfig
from service.errors import NotFound
from service.metrics import GraphObserver, Metrics
from service.operations.checks import check_batch, check_finite_outputs, check_sample
from service.plane.version import LoadedGraphs, ModelVersion

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoded:
    mean: np.ndarray
    log_var: np.ndarray
    version: int


@dataclass(frozen=True)
class Images:
    images: np.ndarray
    version: int


@dataclass(frozen=True)
class Sampled:
    images: np.ndarray
    latents: np.ndarray
    seed: int
    version: int


class DataPlane:
    """Owns the current version; encode, decode, sample and denoise on validated ndarrays.

    `field` names the input in error messages, in the words of the calling front.
    """

    def __init__(self, config: ServerConfig, metrics: Metrics, graphs: LoadedGraphs) -> None:
        self.config = config
        self.metrics = metrics
        self._observers: dict[str, BatchObserver] = {
            graph: GraphObserver(metrics, graph) for graph in ("encoder", "decoder")}
        self._closing: set[asyncio.Task[None]] = set()
        self.current = self._attach(graphs)

    def _attach(self, graphs: LoadedGraphs) -> ModelVersion:
        version = ModelVersion(graphs, self.config, self._observers)
        self.metrics.model_info.labels(str(version.number), version.provider).set(1)
        return version

    def switch(self, graphs: LoadedGraphs) -> None:
        """Make a loaded version current; the old one closes when its last lease ends."""
        old, self.current = self.current, self._attach(graphs)
        if (old.number, old.provider) != (self.current.number, self.current.provider):
            self.metrics.retire_model(str(old.number), old.provider)
        old.retired = True
        logger.info("now serving %s (was %s; %d requests still on it)", self.current.label,
                    old.label, old.leases)
        if old.leases == 0:
            self._close_later(old)

    def _lease(self, want_version: int) -> ModelVersion:
        """The current version, held until released; `want_version` 0 takes whichever it is."""
        version = self.current
        if want_version and want_version != version.number:
            raise NotFound(f"version {want_version} of {version.manifest.model_name!r} is not "
                           f"loaded; version {version.number} is (leave the version empty for "
                           "the current one, or load another first)")
        version.leases += 1
        return version

    def _release(self, version: ModelVersion) -> None:
        version.leases -= 1
        if version.retired and version.leases == 0:
            self._close_later(version)

    def _close_later(self, version: ModelVersion) -> None:
        task = asyncio.get_running_loop().create_task(self._close(version))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(version: ModelVersion) -> None:
        await version.close()
        logger.info("closed %s; its sessions are freed", version.label)

    async def encode(self, images: np.ndarray, deadline_s: float | None, field: str = "images",
                     want_version: int = 0) -> Encoded:
        version = self._lease(want_version)
        try:
            check_batch(images, field, version.manifest.image_shape, unit_range=True)
            mean, log_var = await version.encode(images, deadline_s)
            check_finite_outputs(field, (mean, log_var))
            return Encoded(mean, log_var, version.number)
        finally:
            self._release(version)

    async def decode(self, latents: np.ndarray, deadline_s: float | None, field: str = "latents",
                     want_version: int = 0) -> Images:
        version = self._lease(want_version)
        try:
            check_batch(latents, field, (version.manifest.latent_dim,), unit_range=False)
            images = await version.decode(latents, deadline_s)
            check_finite_outputs(field, (images,))
            return Images(images, version.number)
        finally:
            self._release(version)

    async def sample(self, count: int, seed: int, temperature: float, deadline_s: float | None,
                     want_version: int = 0) -> Sampled:
        temperature = check_sample(count, temperature, self.config.max_sample_count)
        version = self._lease(want_version)
        try:
            images, latents, seed = await version.sample(count, seed, temperature, deadline_s)
            check_finite_outputs("temperature", (images, latents))
            return Sampled(images, latents, seed, version.number)
        finally:
            self._release(version)

    async def denoise(self, images: np.ndarray, deadline_s: float | None, field: str = "images",
                      want_version: int = 0) -> Images:
        version = self._lease(want_version)
        try:
            check_batch(images, field, version.manifest.image_shape, unit_range=True)
            denoised = await version.denoise(images, deadline_s)
            check_finite_outputs(field, (denoised,))
            return Images(denoised, version.number)
        finally:
            self._release(version)

    async def close(self) -> None:
        """Close the current version and wait for retired ones still closing."""
        self.current.retired = True
        await self.current.close()
        if self._closing:
            await asyncio.gather(*self._closing)
