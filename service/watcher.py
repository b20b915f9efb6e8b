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
from service.errors import FailedPrecondition, NotFound
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

    def __init__(self, plane: DataPlane, config: ServerConfig, metrics: Metrics,
                 refused: dict[int, tuple[Fingerprint, str]] | None = None) -> None:
        self.plane = plane
        self.config = config
        self._loaded = metrics.model_loads.labels("loaded")
        self._refused_total = metrics.model_loads.labels("refused")
        self.pinned = config.model_version
        """0 = follow the newest version; N = serve version N (the flag, or a load request)."""
        self._refused: dict[int, tuple[Fingerprint, str]] = dict(refused or {})
        """Version -> its files when refused (at start-up or since), and why."""
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
        """Switch to the highest good version on disk; with a pinned version, only to that one."""
        async with self._lock:
            current = self.plane.current
            repo, name = self.config.model_repo, self.config.model_name
            if self.pinned and self.pinned != current.number:
                await self._try(repo / name / str(self.pinned), self.pinned)
            elif not self.pinned:
                for number in reversed(published_versions(repo, name)):
                    if number == current.number or await self._try(repo / name / str(number), number):
                        break
            self._warn_if_gone(self.plane.current.folder)

    async def load(self, version: int) -> None:
        """Serve `version` from now on (0: the newest); raises if it is missing or refused."""
        repo, name = self.config.model_repo, self.config.model_name
        if version and version not in published_versions(repo, name):
            raise NotFound(f"model {name!r} has no version {version} in the repository; "
                           f"published: {published_versions(repo, name)}")
        self.pinned = version
        self._refused.pop(version, None)  # an explicit request tries again
        await self.rescan()
        if version and self.plane.current.number != version:
            raise FailedPrecondition(f"version {version} was refused: {self.refusal(version)}; "
                                     f"still serving version {self.plane.current.number}")

    def refusal(self, version: int) -> str:
        """Why a version was refused, or "" when it was not."""
        return self._refused[version][1] if version in self._refused else ""

    async def _try(self, folder: Path, number: int) -> bool:
        marks = fingerprint(folder)
        if number in self._refused and self._refused[number][0] == marks:
            return False
        try:
            graphs = await asyncio.to_thread(load_graphs, folder, self.config)
        except Exception as err:  # any failure refuses the candidate; serving goes on
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            self._refused[number] = (marks, reason)
            self._refused_total.inc()
            logger.warning("refused %s: %s; still serving %s", folder, reason,
                           self.plane.current.label)
            return False
        self._loaded.inc()
        self.plane.switch(graphs)
        return True

    def _warn_if_gone(self, folder: Path) -> None:
        gone = not (folder / MANIFEST).is_file()
        if gone and not self._missing_warned:
            logger.warning("%s is gone from disk; still serving it from memory", folder)
        self._missing_warned = gone
