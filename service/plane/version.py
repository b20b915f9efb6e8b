"""ModelVersion: one loaded model version: its manifest, two ONNX Runtime sessions, two batchers.

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
from service.config import ServerConfig
from service.context import RequestContext
from service.errors import first_line
from service.plane.repository import (
    GRAPH_FILES,
    GraphError,
    Manifest,
    ManifestError,
    parse_canonical_version,
    read_manifest,
    verify_graphs,
)
from service.runtime.ort_runner import CUDA, OrtRunner, Signature

logger = logging.getLogger(__name__)
WARMUP_BATCH_SIZES = (1, 8)
"""Batch sizes run once at load (plus max_batch_size) so first requests are not slow."""
ROWS_PER_RUN = {"scorer": 1024}
"""Rows per run of a graph beyond max_batch_size: Score's k importance samples per image are
rows of the scorer, so k = 1000 for one image is one run, not sixteen."""


@dataclass(frozen=True)
class LoadedGraphs:
    """A verified, warmed-up version that is not serving yet."""

    folder: Path
    manifest: Manifest
    encoder: OrtRunner
    decoder: OrtRunner

    @property
    def runners(self) -> dict[str, OrtRunner]:
        return {"encoder": self.encoder, "decoder": self.decoder}


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
    """Read and verify a version folder, create its sessions, check them, warm them up."""
    started = time.monotonic()
    manifest = read_manifest(folder)
    number = parse_canonical_version(folder.name)
    if number is not None and number != manifest.version:
        raise ManifestError(f"{folder / 'manifest.json'}: states version {manifest.version} but "
                            f"lies in folder {folder.name}; publish versions with vae-export")
    verify_graphs(folder, manifest)
    side_by_side = config.runner_instances(on_gpu=False) > 1  # a GPU opens no second session
    runners = {graph: OrtRunner(folder / file, config.device, config.intra_op_threads,
                                manifest.inputs[graph], manifest.outputs[graph],
                                serial_below_rows=config.serial_below_rows,
                                side_by_side=side_by_side)
               for graph, file in GRAPH_FILES.items()}
    image: tuple[int, ...] = tuple(manifest.image_shape)
    latent = (manifest.latent_dim,)
    Shapes = dict[str, tuple[int, ...]]
    contract: dict[str, tuple[Shapes, Shapes]] = {"encoder": ({manifest.inputs["encoder"]: image},
                            dict.fromkeys(manifest.outputs["encoder"], latent)),
                "decoder": ({manifest.inputs["decoder"]: latent},
                            dict.fromkeys(manifest.outputs["decoder"], image))}
    for graph, (inputs, outputs) in contract.items():
        _check_signature(folder / GRAPH_FILES[graph], runners[graph].inputs, inputs)
        _check_signature(folder / GRAPH_FILES[graph], runners[graph].outputs, outputs)
    try:
        for n in sorted({*WARMUP_BATCH_SIZES, config.max_batch_size}):
            runners["encoder"].run(np.zeros((n, *image), np.float32))
            runners["decoder"].run(np.zeros((n, *latent), np.float32))
    except Exception as err:  # ONNX Runtime's errors (out of memory, a kernel) derive from Exception
        raise GraphError(f"{folder}: the warm-up run failed ({first_line(err)}); check the "
                         "graphs with vae-export --check, or lower --max-batch-size") from err
    logger.info("loaded %s in %.2f s", folder, time.monotonic() - started)
    return LoadedGraphs(folder, manifest, runners["encoder"], runners["decoder"])


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
        self._batchers = {
            graph: DynamicBatcher(graph, runner.run,
                                  max_batch_size=max(config.max_batch_size, ROWS_PER_RUN.get(graph, 0)),
                                  max_queue_delay_us=config.max_queue_delay_us,
                                  max_queue_rows=config.max_queue_rows, instances=self.instances,
                                  inline_below_us=config.inline_below_us,
                                  observer=observers.get(graph))
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
