"""ModelVersion: one loaded model version: its manifest, two ONNX Runtime sessions, two batchers.

Loading is split in two: `load_graphs` does the slow, blocking part (sha256, sessions, the
signature check, warm-up) and runs in a worker thread, so a new version can be prepared
while the current one serves; `ModelVersion` then attaches batchers on the event loop.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.batching.batcher import BatchObserver, DynamicBatcher
from service.config import ServerConfig
from service.errors import first_line
from service.operations.draws import prior_latents
from service.plane.repository import (
    GRAPHS,
    GraphError,
    Manifest,
    ManifestError,
    parse_canonical_version,
    read_manifest,
    row_shapes,
    verify_graphs,
)
from service.runtime.ort_runner import CUDA, OrtRunner, Signature, pack_rows

logger = logging.getLogger(__name__)
WARMUP_BATCH_SIZES = (1, 8)
"""Batch sizes run once at load (plus max_batch_size) so first requests are not slow."""
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class LoadedGraphs:
    """A verified, warmed-up version that is not serving yet: one runner per graph it holds."""

    folder: Path
    manifest: Manifest
    runners: dict[str, OrtRunner]

    @property
    def encoder(self) -> OrtRunner:
        return self.runners["encoder"]

    @property
    def decoder(self) -> OrtRunner:
        return self.runners["decoder"]


def _check_signature(path: Path, found: Signature, expected: dict[str, tuple[int, ...]]) -> None:
    """Names, ranks and fixed dimensions as the manifest states; axis 0 must be dynamic."""
    if set(found) != set(expected):
        raise GraphError(f"{path} has tensors {sorted(found)}; the manifest states "
                         f"{sorted(expected)}: re-export the version with vae-export")
    for name, tail in expected.items():
        dims = found[name]
        if len(dims) != len(tail) + 1 or isinstance(dims[0], int) or list(dims[1:]) != list(tail):
            raise GraphError(f"{path}: {name} has dimensions {dims}; the manifest states "
                             f"[batch, {', '.join(map(str, tail))}]: re-export the version")


def load_graphs(folder: Path, config: ServerConfig) -> LoadedGraphs:
    """Read and verify a version folder, create a session per graph it holds, check each
    against the contract, warm them up."""
    started = time.monotonic()
    manifest = read_manifest(folder)
    number = parse_canonical_version(folder.name)
    if number is not None and number != manifest.version:
        raise ManifestError(f"{folder / 'manifest.json'}: states version {manifest.version} but "
                            f"lies in folder {folder.name}; publish versions with vae-export")
    verify_graphs(folder, manifest)
    side_by_side = config.runner_instances(on_gpu=False) > 1  # a GPU opens no second session
    runners, shapes = {}, {}
    for graph in manifest.graphs:
        path = folder / GRAPHS[graph].file
        inputs, outputs = row_shapes(graph, manifest.image_shape, manifest.latent_dim)
        runner = OrtRunner(path, config.device, config.intra_op_threads, list(inputs),
                           manifest.outputs[graph], serial_below_rows=config.serial_below_rows,
                           side_by_side=side_by_side)
        _check_signature(path, runner.inputs, inputs)
        _check_signature(path, runner.outputs, outputs)
        runners[graph], shapes[graph] = runner, inputs.values()
    try:
        for n in sorted({*WARMUP_BATCH_SIZES, config.max_batch_size}):
            for graph, runner in runners.items():
                runner.run(pack_rows(*(np.zeros((n, *row), np.float32) for row in shapes[graph])))
    except Exception as err:  # ONNX Runtime's errors (out of memory, a kernel) derive from Exception
        raise GraphError(f"{folder}: the warm-up run failed ({first_line(err)}); check the "
                         "graphs with vae-export --check, or lower --max-batch-size") from err
    logger.info("loaded %s (%s) in %.2f s", folder, ", ".join(runners),
                time.monotonic() - started)
    return LoadedGraphs(folder, manifest, runners)


class ModelVersion:
    """A serving version; requests lease it, and it closes once retired and no lease is left."""

    def __init__(self, graphs: LoadedGraphs, config: ServerConfig,
                 observers: dict[str, BatchObserver]) -> None:
        self.manifest = graphs.manifest
        self.folder = graphs.folder
        self.number = graphs.manifest.version
        self.provider = graphs.decoder.provider
        self.instances = config.runner_instances(on_gpu=self.provider == CUDA)
        self.leases = 0
        self.retired = False
        self._encoder_outputs = graphs.encoder.output_names
        self._encoder, self._decoder = (
            DynamicBatcher(name, runner.run, max_batch_size=config.max_batch_size,
                           max_queue_delay_us=config.max_queue_delay_us,
                           max_queue_rows=config.max_queue_rows, instances=self.instances,
                           inline_below_us=config.inline_below_us, observer=observers.get(name))
            for name, runner in (("encoder", graphs.encoder), ("decoder", graphs.decoder)))

    @property
    def label(self) -> str:
        return f"{self.manifest.model_name}/{self.number}"

    async def encode(self, images: np.ndarray, deadline_s: float | None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(mean, log_var), bound by the names the runner fetched, never by their position."""
        outputs = await self._encoder.submit(images, deadline_s)
        named = dict(zip(self._encoder_outputs, outputs, strict=True))
        return named["mean"], named["log_var"]

    async def decode(self, latents: np.ndarray, deadline_s: float | None) -> np.ndarray:
        (images,) = await self._decoder.submit(latents, deadline_s)
        return images

    async def sample(self, count: int, seed: int, temperature: float, deadline_s: float | None
                     ) -> tuple[np.ndarray, np.ndarray, int]:
        """Seed 0 means: pick one (returned, so the draw can be repeated)."""
        seed = seed or secrets.randbelow(MAX_SEED) + 1
        latents = prior_latents(count, self.manifest.latent_dim, seed, temperature)
        return await self.decode(latents, deadline_s), latents, seed

    async def denoise(self, images: np.ndarray, deadline_s: float | None) -> np.ndarray:
        """decode(posterior mean): the most likely clean image under the model."""
        mean, _ = await self.encode(images, deadline_s)
        return await self.decode(mean, deadline_s)

    async def close(self) -> None:
        """Stop both batchers; dropping the version then frees its sessions."""
        await self._encoder.close()
        await self._decoder.close()
