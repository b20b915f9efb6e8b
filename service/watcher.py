"""VersionWatcher: rescan the model repository and make a newer good version current.

Runs every `poll_interval_s` and at once on SIGHUP. A candidate is loaded, verified and
warmed in a worker thread (service.version.load_graphs) while the current version serves;
a candidate that fails any step is refused with one log line and a counter, and is not
tried again until one of its files changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from service.config import ServerConfig
from service.dataplane import DataPlane
from service.metrics import Metrics
from service.repository import GRAPH_FILES, MANIFEST, published_versions
from service.version import load_graphs

logger = logging.getLogger(__name__)
Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(folder: Path) -> Fingerprint:
    """Size and mtime of the files that make a version: a change means "try it again"."""
    marks = []
    for name in (MANIFEST, *GRAPH_FILES.values()):
        try:
            stat = (folder / name).stat()
            marks.append((name, stat.st_size, stat.st_mtime_ns))
        except OSError:
            marks.append((name, -1, -1))
    return tuple(marks)


class VersionWatcher:
    """Keeps the data plane on the newest good version (or on the pinned one)."""

    def __init__(self, plane: DataPlane, config: ServerConfig, metrics: Metrics) -> None:
        self.plane = plane
        self.config = config
        self._loaded = metrics.model_loads.labels("loaded")
        self._refused_total = metrics.model_loads.labels("refused")
        self._refused: dict[int, Fingerprint] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._missing_warned = False

    def rescan_soon(self) -> None:
        """SIGHUP: rescan now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        interval = self.config.poll_interval_s or None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            await self.rescan()

    async def rescan(self) -> None:
        """Switch to the highest good version on disk; with a pinned version, only watch it."""
        async with self._lock:
            current = self.plane.current
            repo, name = self.config.model_repo, self.config.model_name
            if not self.config.model_version:
                for number in reversed(published_versions(repo, name)):
                    if number == current.number:
                        break
                    if await self._try(repo / name / str(number), number):
                        return
            self._warn_if_gone(current.folder)

    async def _try(self, folder: Path, number: int) -> bool:
        marks = fingerprint(folder)
        if self._refused.get(number) == marks:
            return False
        try:
            graphs = await asyncio.to_thread(load_graphs, folder, self.config)
        except Exception as err:  # any failure refuses the candidate; serving goes on
            self._refused[number] = marks
            self._refused_total.inc()
            logger.warning("refused %s: %s; still serving %s", folder,
                           str(err).splitlines()[0], self.plane.current.label)
            return False
        self._loaded.inc()
        self.plane.switch(graphs)
        return True

    def _warn_if_gone(self, folder: Path) -> None:
        gone = not (folder / MANIFEST).is_file()
        if gone and not self._missing_warned:
            logger.warning("%s is gone from disk; still serving it from memory", folder)
        self._missing_warned = gone
