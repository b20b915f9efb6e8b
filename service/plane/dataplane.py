"""DataPlane: the served model as a value that can change while traffic flows.

Every front (vae.v1, KServe v2) calls `run` with a declared operation and decoded ndarrays.
A request leases the current version for its whole life, so a Denoise never runs its
encoder on one version and its decoder on another; inputs are validated against that
version's manifest. `switch` makes a loaded version current; the old one finishes its
leased requests, then closes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from service.batching.batcher import BatchObserver
from service.config import ServerConfig
from service.context import RequestContext
from service.errors import FailedPrecondition, NotFound
from service.metrics import GraphObserver, Metrics, ScoreObserver
from service.operations.catalog import OPERATIONS
from service.operations.checks import check_finite_outputs, check_inputs
from service.operations.spec import Inputs, Operation, Outputs
from service.plane.version import LoadedGraphs, ModelVersion

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """An operation's outputs by name, and the version that computed all of them."""

    outputs: Outputs
    version: int


class _Lease:
    """`with plane.lease(version)`: the version is held until the block ends, awaits inside
    it included (taking and giving back a lease never waits, so a plain `with` does: an
    `async with` would cost every call two more coroutines)."""

    __slots__ = ("_plane", "_version")

    def __init__(self, plane: DataPlane, version: ModelVersion) -> None:
        self._plane, self._version = plane, version

    def __enter__(self) -> ModelVersion:
        return self._version

    def __exit__(self, *exc: object) -> None:
        self._plane.release(self._version)


class DataPlane:
    """Owns the current version and runs any declared operation on it."""

    def __init__(self, config: ServerConfig, metrics: Metrics, graphs: LoadedGraphs,
                 operations: tuple[Operation, ...] = OPERATIONS) -> None:
        self.config = config
        self.operations = operations
        self.metrics = metrics
        self._observers: dict[str, BatchObserver] = {}
        """Graph -> its metrics, created when a version first holds that graph."""
        self._closing: set[asyncio.Task[None]] = set()
        self.current = self._attach(graphs)

    def _attach(self, graphs: LoadedGraphs) -> ModelVersion:
        for graph in graphs.runners:
            if graph not in self._observers:
                self._observers[graph] = GraphObserver(self.metrics, graph)
        version = ModelVersion(graphs, self.config, self._observers,
                               ScoreObserver(self.metrics, str(graphs.manifest.version)))
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

    def lease(self, want_version: int) -> _Lease:
        """The current version, held for a `with` block; 0 takes whichever it is."""
        version = self.current
        if want_version and want_version != version.number:
            raise NotFound(f"version {want_version} of {version.manifest.model_name!r} is not "
                           f"loaded; version {version.number} is (leave the version empty for "
                           "the current one, or load another first)")
        version.leases += 1
        return _Lease(self, version)

    def release(self, version: ModelVersion) -> None:
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

    def runnable(self, version: ModelVersion) -> list[Operation]:
        """The operations whose graphs `version` holds."""
        return [op for op in self.operations if version.graphs.issuperset(op.graphs)]

    async def run(self, operation: Operation, inputs: Inputs, context: RequestContext) -> Answer:
        """Run a declared operation on one leased version: inputs checked against its manifest,
        every graph of the operation from that version, outputs checked finite."""
        with self.lease(context.version) as version:
            if not version.graphs.issuperset(operation.graphs):
                missing = [graph for graph in operation.graphs if graph not in version.graphs]
                raise FailedPrecondition(
                    f"{operation.name}: version {version.number} has no {', '.join(missing)} "
                    f"graph ({version.folder}); re-export the model with this release's "
                    "vae-export (it writes every graph), then publish it as a new version")
            check_inputs(operation, inputs, version.manifest, context)
            outputs = await operation.run(version, inputs, context, self.config)
            check_finite_outputs(context.wire_name(operation.blamed_input),
                                 tuple(outputs[s.name] for s in operation.outputs
                                       if s.datatype == "FP32"))
            return Answer(outputs, version.number)

    async def close(self) -> None:
        """Close the current version and wait for retired ones still closing."""
        self.current.retired = True
        await self.current.close()
        if self._closing:
            await asyncio.gather(*self._closing)
