"""ModelVersion: one loaded model version: its manifest, a session and a batcher per graph.

Loading is split in two: `load_graphs` does the slow, blocking part (sha256, sessions, the
signature check, warm-up) and runs in a worker thread, so a new version can be prepared
while the current one serves; `ModelVersion` then attaches batchers on the event loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from service.batching.batcher import BatchObserver, DynamicBatcher
from service.batching.saturation import CpuSaturation
from service.config import ServerConfig
from service.context import RequestContext
from service.errors import first_line
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
ROWS_PER_RUN = {"scorer": 1024}
"""Rows per run of a graph beyond max_batch_size: Score's k importance samples per image are
rows of the scorer, so k = 1000 for one image is one run, not sixteen."""


def batch_rows(graph: str, config: ServerConfig) -> int:
    """The most rows one run of `graph` takes (its batcher's max_batch_size)."""
    return max(config.max_batch_size, ROWS_PER_RUN.get(graph, 0))


@dataclass(frozen=True)
class LoadedGraphs:
    """A verified, warmed-up version that is not serving yet: one runner per graph it holds."""

    folder: Path
    manifest: Manifest
    runners: dict[str, OrtRunner]


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
        runner = OrtRunner(path, config.device, config.session_threads(), list(inputs),
                           manifest.outputs[graph], serial_below_rows=config.serial_below_rows,
                           side_by_side=side_by_side)
        _check_signature(path, runner.inputs, inputs)
        _check_signature(path, runner.outputs, outputs)
        runners[graph], shapes[graph] = runner, inputs.values()
    try:
        for graph, runner in runners.items():
            for n in sorted({*WARMUP_BATCH_SIZES, config.max_batch_size}):
                runner.run(pack_rows(*(np.zeros((n, *row), np.float32) for row in shapes[graph])))
    except Exception as err:  # ONNX Runtime's errors (out of memory, a kernel) derive from Exception
        raise GraphError(f"{folder}: the warm-up run failed ({first_line(err)}); check the "
                         "graphs with vae-export --check, or lower --max-batch-size") from err
    logger.info("loaded %s (%s) in %.2f s", folder, ", ".join(runners),
                time.monotonic() - started)
    return LoadedGraphs(folder, manifest, runners)


class ScoreSink(Protocol):
    """Where Score's per-image results go (the drift histogram, service/metrics.py)."""

    def observe(self, neg_elbo: np.ndarray, nll: np.ndarray) -> None: ...


class ModelVersion:
    """A serving version; requests lease it, and it closes once retired and no lease is left.

    One DynamicBatcher per graph it holds; operations (service/operations/) run on these.
    """

    def __init__(self, graphs: LoadedGraphs, config: ServerConfig,
                 observers: dict[str, BatchObserver], scores: ScoreSink) -> None:
        self.manifest = graphs.manifest
        self.scores = scores
        self.folder = graphs.folder
        self.number = graphs.manifest.version
        runners = graphs.runners
        self.graphs = frozenset(runners)
        self.provider = runners["decoder"].provider
        self.instances = config.runner_instances(on_gpu=self.provider == CUDA)
        self.leases = 0
        self.retired = False
        self._output_names = {graph: runner.output_names for graph, runner in runners.items()}
        saturation = CpuSaturation(cores=config.process_cores())  # one per event loop
        self._batchers = {
            graph: DynamicBatcher(graph, runner.run,
                                  max_batch_size=batch_rows(graph, config),
                                  max_queue_delay_us=config.max_queue_delay_us,
                                  max_queue_rows=config.max_queue_rows, instances=self.instances,
                                  inline_below_us=config.inline_below_us,
                                  observer=observers.get(graph), saturation=saturation)
            for graph, runner in runners.items()}

    @property
    def label(self) -> str:
        return f"{self.manifest.model_name}/{self.number}"

    async def run(self, graph: str, rows: np.ndarray, context: RequestContext
                  ) -> dict[str, np.ndarray]:
        """One graph's outputs for these rows, by name, through its batcher."""
        outputs = await self._batchers[graph].submit(rows, context)
        return dict(zip(self._output_names[graph], outputs, strict=True))

    async def encode(self, images: np.ndarray, context: RequestContext
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(mean, log_var), bound by the names the runner fetched, never by their position."""
        named = await self.run("encoder", images, context)
        return named["mean"], named["log_var"]

    async def decode(self, latents: np.ndarray, context: RequestContext) -> np.ndarray:
        (images,) = await self._batchers["decoder"].submit(latents, context)
        return images

    async def close(self) -> None:
        """Stop every batcher; dropping the version then frees its sessions."""
        for batcher in self._batchers.values():
            await batcher.close()
