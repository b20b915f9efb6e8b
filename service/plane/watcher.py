"""VersionWatcher: rescan the model repository and make a newer good version current.

Runs every `poll_interval_s` and at once on SIGHUP. A candidate is loaded, verified and
warmed in a worker thread (service.plane.version.load_graphs) while the current version serves;
a candidate that fails any step, or whose signature differs from the served one, is refused
with one log line and a counter, and is not tried again until one of its files changes.
A rescan that fails is logged and counted, and the next poll or SIGHUP tries again.

What to serve: the operator's pin (service/plane/pin.py, set by RepositoryModelLoad), else
--model-version, where 0 means the newest good version. Under --workers each worker reports
what it serves in the supervisor's status folder, so a Load answers once all serve it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from service.config import ServerConfig
from service.cores import usable_cores
from service.errors import (
    FailedPrecondition,
    ModelUnavailable,
    NotFound,
    ServiceError,
    first_line,
)
from service.metrics import Metrics
from service.plane.dataplane import DataPlane
from service.plane.pin import PinError, pin_path, read_pin, write_json, write_pin
from service.plane.repository import (
    GRAPH_FILES,
    MANIFEST,
    SignatureError,
    published_versions,
    read_manifest,
)
from service.plane.version import LoadedGraphs, load_graphs
from service.transport.workers import STATUS_ENV

logger = logging.getLogger(__name__)
Fingerprint = tuple[tuple[str, int, int], ...]
AGREE_TIMEOUT_S = 60.0
"""How long a Load under --workers waits for every worker to serve what it set."""
AGREE_POLL_S = 0.05


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


def wanted_version(config: ServerConfig) -> tuple[int, str]:
    """The version to serve (0 = the newest) and why the pin is passed over ("" when it is not):
    the pin while it names a version on disk, else --model-version. An unreadable pin raises
    PinError: a running server keeps what it serves, a starting one uses starting_version."""
    repo, name = config.model_repo, config.model_name
    pinned = read_pin(repo, name)
    if pinned and pinned not in published_versions(repo, name):
        return config.model_version, (f"{pin_path(repo, name)} pins version {pinned}, which is "
                                      "not on disk; following --model-version")
    return pinned or config.model_version, ""


def starting_version(config: ServerConfig) -> int:
    """What a (re)starting server loads first: wanted_version, with an unusable pin a warning
    rather than a reason not to start."""
    try:
        version, passed_over = wanted_version(config)
    except PinError as err:
        logger.warning("%s; starting by --model-version", err)
        return config.model_version
    if passed_over:
        logger.warning("%s", passed_over)
    return version


class VersionWatcher:
    """Keeps the data plane on the newest good version (or on the pinned one)."""

    def __init__(self, plane: DataPlane, config: ServerConfig, metrics: Metrics,
                 refused: dict[int, tuple[Fingerprint, str]] | None = None) -> None:
        self.plane = plane
        self.config = config
        self._loaded = metrics.model_loads.labels("loaded")
        self._refused_total = metrics.model_loads.labels("refused")
        self._errors = metrics.model_loads.labels("error")
        self._refused: dict[int, tuple[Fingerprint, str]] = dict(refused or {})
        """Version -> its files when refused (at start-up or since), and why."""
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._missing_warned = False
        self._last_error = ""
        self._passed_over = ""
        self._seen_pin: int | None = None
        """The version pinned() answered last; None before the first rescan."""
        status = os.environ.get(STATUS_ENV) if config.workers != 1 else None
        self._status_dir = Path(status) if status else None
        """Under --workers: the supervisor's folder of per-worker status files."""
        self._supervisor_pid = os.getppid()

    def pinned(self) -> int:
        """The version to serve: the operator's pin, else --model-version; 0 = the newest. A pin
        that changed makes its version worth a new try, here as on the worker that wrote it."""
        version, passed_over = wanted_version(self.config)
        if passed_over and passed_over != self._passed_over:
            logger.warning("%s", passed_over)
        self._passed_over = passed_over
        if self._seen_pin is not None and version != self._seen_pin:
            self._refused.pop(version, None)
        self._seen_pin = version
        return version

    def rescan_soon(self) -> None:
        """SIGHUP: rescan now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Rescan at once (the pin may have changed while this worker started), then at each
        poll or SIGHUP; a rescan that raises is logged, counted and tried again."""
        interval = self.config.poll_interval_s or None
        while True:
            try:
                await self.rescan()
            except Exception as err:  # the loop must outlive any one rescan
                self._errors.inc()
                message = first_line(err)
                if message != self._last_error:
                    logger.error("rescan of %s failed: %s; still serving %s; trying again at "
                                 "the next poll or SIGHUP", self.config.model_repo /
                                 self.config.model_name, message, self.plane.current.label)
                self._last_error = message
            else:
                if self._last_error:
                    logger.info("rescan of %s works again", self.config.model_repo /
                                self.config.model_name)
                self._last_error = ""
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()

    async def rescan(self) -> None:
        """Switch to the highest good version on disk; with a pinned version, only to that one."""
        async with self._lock:
            await self._follow(self.pinned())
        self._report()

    async def load(self, version: int) -> None:
        """Pin `version` (0: remove the pin) once it is loaded here, then wait for every worker
        to serve it; a version that is missing or refused changes nothing."""
        repo, name = self.config.model_repo, self.config.model_name
        if version and version not in published_versions(repo, name):
            raise NotFound(f"model {name!r} has no version {version} in the repository; "
                           f"published: {published_versions(repo, name)}")
        async with self._lock:
            previous = self._pin_or_none()
            graphs = None
            if version and version != self.plane.current.number:
                self._refused.pop(version, None)  # an explicit request tries again
                graphs = await self._prepare(repo / name / str(version), version)
                if graphs is None:
                    raise FailedPrecondition(f"version {version} was refused: "
                                             f"{self.refusal(version)}; still serving version "
                                             f"{self.plane.current.number}; nothing changed")
            try:
                write_pin(repo, name, version)
            except OSError as err:
                raise FailedPrecondition(
                    f"cannot write {pin_path(repo, name)} ({err.strerror}): a load needs the "
                    "repository writable by the server; mount it read-write, or serve a fixed "
                    "version with --model-version; nothing changed") from err
            if graphs is not None:
                self._switch(graphs)
            await self._follow(self.pinned())  # version 0: back to --model-version's choice
        self._report()
        try:
            await self._agree()
        except ServiceError:
            if self._pin_or_none() == version:  # not when another Load has pinned since
                write_pin(repo, name, previous)  # every worker follows the pin back
                self._wake_workers()
            raise

    def refusal(self, version: int) -> str:
        """Why a version was refused, or "" when it was not."""
        return self._refused[version][1] if version in self._refused else ""

    async def _follow(self, pinned: int) -> None:
        current = self.plane.current
        repo, name = self.config.model_repo, self.config.model_name
        if pinned and pinned != current.number:
            await self._try(repo / name / str(pinned), pinned)
        elif not pinned:
            for number in reversed(published_versions(repo, name)):
                if number == current.number or await self._try(repo / name / str(number), number):
                    break
        self._warn_if_gone(self.plane.current.folder)

    async def _try(self, folder: Path, number: int) -> bool:
        graphs = await self._prepare(folder, number)
        if graphs is not None:
            self._switch(graphs)
        return graphs is not None

    async def _prepare(self, folder: Path, number: int) -> LoadedGraphs | None:
        """The candidate loaded and warmed, or None when refused (logged and counted)."""
        marks = fingerprint(folder)
        if number in self._refused and self._refused[number][0] == marks:
            return None
        try:
            return await asyncio.to_thread(self._load_candidate, folder)
        except Exception as err:  # any failure refuses the candidate; serving goes on
            reason = first_line(err)
            self._refused[number] = (marks, reason)
            self._refused_total.inc()
            logger.warning("refused %s: %s; still serving %s", folder, reason,
                           self.plane.current.label)
            return None

    def _load_candidate(self, folder: Path) -> LoadedGraphs:
        """First what every client relies on (the manifest alone), then load_graphs."""
        served = self.plane.current
        changes = served.manifest.signature.differences(read_manifest(folder).signature,
                                                        f"the served {served.label}")
        if changes:
            raise SignatureError(f"{folder}: {'; '.join(changes)}; clients of "
                                 f"{self.config.model_name} rely on them: publish it as another "
                                 "model (vae-export --model NAME)")
        return load_graphs(folder, self.config)

    def _switch(self, graphs: LoadedGraphs) -> None:
        self._loaded.inc()
        self.plane.switch(graphs)

    def _pin_or_none(self) -> int:
        """The pin file's version; 0 when there is none or it cannot be read (a load fixes it)."""
        try:
            return read_pin(self.config.model_repo, self.config.model_name)
        except PinError:
            return 0

    def _report(self) -> None:
        """Under --workers: what this worker serves, for a sibling's _agree."""
        if self._status_dir is None:
            return
        pinned = self._pin_or_none() or self.config.model_version
        write_json(self._status_dir / f"{os.getpid()}.json",
                   {"pin": pinned, "version": self.plane.current.number,
                    "refused": self.refusal(pinned) if pinned else ""})

    def _wake_workers(self) -> None:
        """The supervisor passes SIGHUP to every worker: each rescans and reads the pin."""
        if self._status_dir is None:
            return
        if os.getppid() != self._supervisor_pid:
            raise ModelUnavailable("this worker's supervisor is gone and the worker is stopping; "
                                   "send the load to another connection or replica")
        os.kill(self._supervisor_pid, signal.SIGHUP)

    async def _agree(self) -> None:
        """Under --workers: return once every worker serves this one's version under the same
        pin; raises naming the workers that refuse it or do not serve it in time."""
        if self._status_dir is None:
            return
        self._wake_workers()
        want = (self._pin_or_none() or self.config.model_version, self.plane.current.number)
        workers = self.config.workers or usable_cores()
        give_up_s = time.monotonic() + AGREE_TIMEOUT_S
        while True:
            statuses = _live_statuses(self._status_dir)
            behind = {pid: s for pid, s in statuses.items()
                      if (s.get("pin"), s.get("version")) != want}
            refused = {pid: s["refused"] for pid, s in behind.items()
                       if s.get("pin") == want[0] and s.get("refused")}
            if refused:
                raise FailedPrecondition(
                    f"worker(s) {', '.join(f'pid {p}: {r}' for p, r in refused.items())} refused "
                    f"version {want[1]}; the load is rolled back")
            if len(statuses) >= workers and not behind:
                return
            if time.monotonic() > give_up_s:
                serving = ", ".join(f"pid {p} serves {s.get('version')}" for p, s in behind.items())
                raise ModelUnavailable(
                    f"after {AGREE_TIMEOUT_S:.0f} s, {len(statuses)} of {workers} workers are up "
                    f"and not all serve version {want[1]} ({serving or 'the others are starting'}); "
                    "the load is rolled back: try again")
            await asyncio.sleep(AGREE_POLL_S)

    def _warn_if_gone(self, folder: Path) -> None:
        gone = not (folder / MANIFEST).is_file()
        if gone and not self._missing_warned:
            logger.warning("%s is gone from disk; still serving it from memory", folder)
        self._missing_warned = gone


def _live_statuses(folder: Path) -> dict[int, dict[str, Any]]:
    """pid -> its last report, for the workers still alive; a dead worker's report is removed."""
    statuses = {}
    for path in folder.glob("[0-9]*.json"):
        try:
            pid = int(path.stem)
            os.kill(pid, 0)
            statuses[pid] = json.loads(path.read_text())
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (OSError, ValueError):
            continue  # not a pid, or being replaced: the next look reads it
    return statuses
