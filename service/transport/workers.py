"""Pre-forked workers: N server processes on one port (SO_REUSEPORT), one metrics endpoint.

The parent forks before any gRPC object exists (grpc does not survive a fork), then only
supervises: it restarts a worker that dies, with backoff; it passes SIGTERM, SIGINT and
SIGHUP to every worker; and it serves /metrics for all of them with prometheus_client's
multiprocess mode (each worker writes its samples to files in a shared folder: no scraping
of workers, and nothing lost when one restarts). The kernel spreads *connections* across
the workers, so a client needs several connections to reach several of them.

The parent never blocks: signals and worker exits wake one poll() (signal.set_wakeup_fd),
and a restart is a deadline, so a SIGTERM during a backoff stops everything at once. Each
worker tells the parent through a pipe when it serves; a worker that dies after that is
restarted whatever its exit code, and only a start-up failure before any worker served
(exit 2: a bad setting, or no good model version) stops the server.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from service.config import ServerConfig

logger = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STATUS_ENV = "VAE_WORKERS_STATUS_DIR"
"""Set for the workers: a folder where each reports the version it serves (service/plane/watcher.py)."""
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_S = 60.0
"""A worker that served this long has its backoff start over at the first step."""
STARTUP_ERROR = 2
"""A worker's exit code for a bad setting or model: fatal before any worker served."""
PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when its parent dies (Linux)."""
SUPERVISED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)

ServeOne = Callable[[ServerConfig, Callable[[], None]], int]
"""Runs one worker until it stops: its config, and what to call once it serves."""


def worker_config(config: ServerConfig) -> ServerConfig:
    """What each worker runs: the port shared, metrics left to the parent, cores split
    (ServerConfig.process_cores)."""
    return replace(config, metrics_port=-1, intra_op_threads=config.session_threads())


def restart_backoff(restarts: int, served_s: float) -> tuple[float, int]:
    """The wait before a slot's next restart, and its restart count after it."""
    if served_s >= STABLE_S:
        restarts = 0
    return RESTART_BACKOFF_S[min(restarts, len(RESTART_BACKOFF_S) - 1)], restarts + 1


def _exit_before_serving(signum: int, frame: object) -> None:
    """A stop before serve() takes over the signals (it does before the port opens): nothing was
    admitted, so nothing to drain."""
    os._exit(0)


def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker when the supervisor dies, even by SIGKILL: it drains, never orphans."""
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # died before prctl took effect
        os._exit(0)


@dataclass
class _Worker:
    """A live worker: its slot and the read end of the pipe it writes to once it serves."""

    slot: int
    ready_fd: int
    serving_since: float | None = None


class Supervisor:
    """Forks and keeps `workers` processes running `serve_one(config)` until a signal."""

    def __init__(self, config: ServerConfig, workers: int, serve_one: ServeOne) -> None:
        self.config = config
        self.workers = workers
        self.serve_one = serve_one
        self.children: dict[int, _Worker] = {}
        self.stopping = False
        self._restarts = [0] * workers
        self._restart_at: dict[int, float] = {}
        """slot -> monotonic time of its pending restart."""
        self._served = False
        """A worker reached SERVING: start-up failures are retried from then on."""
        self._metrics: WSGIServer | None = None
        self._wakeup_r, self._wakeup_w = os.pipe()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 when every worker drained and exited 0."""
        folder = tempfile.mkdtemp(prefix="vae-serve-metrics-")
        os.environ[MULTIPROC_ENV] = folder  # before prometheus_client is imported anywhere
        status = os.environ[STATUS_ENV] = tempfile.mkdtemp(prefix="vae-serve-workers-")
        try:
            for fd in (self._wakeup_r, self._wakeup_w):
                os.set_blocking(fd, False)
            signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
            for sig in SUPERVISED:  # the handlers only wake poll(); the loop does the work
                signal.signal(sig, lambda signum, frame: None)
            for slot in range(self.workers):
                self._fork(slot)
            if self.config.metrics_port >= 0:
                self._metrics = self._serve_metrics(folder)
            logger.info("%d workers on %s:%d (metrics :%s)", self.workers, self.config.host,
                        self.config.port, self.config.metrics_port)
            return self._supervise(folder)
        finally:
            if self._metrics is not None:
                self._metrics.shutdown()
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(status, ignore_errors=True)

    def _fork(self, slot: int) -> None:
        ready_r, ready_w = os.pipe()
        parent = os.getpid()
        # Held until the worker has its own handlers: a signal meant for it must not reach the
        # parent's handler (and wake-up pipe) in it, nor be lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISED)
        pid = os.fork()
        if pid == 0:  # the worker; serve() replaces these handlers once it is serving
            code = STARTUP_ERROR
            try:
                self._become_worker(parent, ready_r)
                code = self.serve_one(worker_config(self.config),
                                      lambda: _tell_serving(ready_w))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISED)
        os.close(ready_w)
        self.children[pid] = _Worker(slot, ready_r)

    def _become_worker(self, parent: int, ready_r: int) -> None:
        """Drop what is the parent's: its signal handling, its pipes, its metrics socket."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_before_serving)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISED)
        for fd in (self._wakeup_r, self._wakeup_w, ready_r,
                   *(w.ready_fd for w in self.children.values() if w.ready_fd >= 0)):
            os.close(fd)
        if self._metrics is not None:
            self._metrics.socket.close()  # the parent's listening socket: never held by a worker
        _die_with_parent(parent)

    def _serve_metrics(self, folder: str) -> WSGIServer:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=folder)
        server, _ = start_http_server(self.config.metrics_port, addr=self.config.host,
                                      registry=registry)
        return server

    def _forward(self, signum: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _supervise(self, folder: str) -> int:
        """Wait for signals, serving notices, exits and restart deadlines until all are done."""
        worst = 0
        while self.children or (self._restart_at and not self.stopping):
            readable = self._wait()
            if self._wakeup_r in readable:
                for signum in os.read(self._wakeup_r, 512):
                    self._on_signal(signum)
            for worker in self.children.values():
                if worker.ready_fd in readable:
                    self._read_ready(worker)
            worst = max(worst, self._reap(folder))
            now = time.monotonic()
            for slot, due in list(self._restart_at.items()):
                if due <= now and not self.stopping:
                    del self._restart_at[slot]
                    self._fork(slot)
        return worst

    def _wait(self) -> set[int]:
        """Block until a signal, a serving notice or the next restart is due."""
        poller = select.poll()
        for fd in (self._wakeup_r, *(w.ready_fd for w in self.children.values())):
            if fd >= 0:
                poller.register(fd, select.POLLIN)
        timeout_ms = None
        if self._restart_at and not self.stopping:
            timeout_ms = max(0.0, min(self._restart_at.values()) - time.monotonic()) * 1000
        return {fd for fd, _ in poller.poll(timeout_ms)}

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not self.stopping and self._restart_at:
                logger.info("stopping: %d pending restarts cancelled", len(self._restart_at))
            self.stopping = True
            self._restart_at.clear()
            self._forward(signum)
        elif signum == signal.SIGHUP:
            self._forward(signum)

    def _read_ready(self, worker: _Worker) -> None:
        """A byte: the worker serves; end of file: it exits (or exited) without a word more."""
        if os.read(worker.ready_fd, 1):
            worker.serving_since = time.monotonic()
            self._served = True
            return
        os.close(worker.ready_fd)
        worker.ready_fd = -1

    def _reap(self, folder: str) -> int:
        """Collect every exited worker; schedules restarts; returns the worst exit code to report."""
        from prometheus_client import multiprocess

        worst = 0
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self.children.pop(pid, None)
            if worker is None:
                continue
            if worker.ready_fd >= 0:  # a notice not read yet still counts
                self._read_ready(worker)
                if worker.ready_fd >= 0:
                    os.close(worker.ready_fd)
            multiprocess.mark_process_dead(pid, folder)
            (Path(os.environ[STATUS_ENV]) / f"{pid}.json").unlink(missing_ok=True)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                worst = max(worst, abs(code))
            elif code == STARTUP_ERROR and not self._served:
                logger.error("worker %d stopped at start-up (exit 2); stopping all", worker.slot)
                self.stopping = True
                self._restart_at.clear()
                self._forward(signal.SIGTERM)
                worst = STARTUP_ERROR
            else:
                self._schedule_restart(worker, pid, code)
        return worst

    def _schedule_restart(self, worker: _Worker, pid: int, code: int) -> None:
        served_s = 0.0 if worker.serving_since is None else time.monotonic() - worker.serving_since
        delay, self._restarts[worker.slot] = restart_backoff(self._restarts[worker.slot],
                                                             served_s)
        what = "exited" if worker.serving_since is not None else "failed to start"
        logger.warning("worker %d (pid %d) %s with %d; restarting it in %.0f s", worker.slot,
                       pid, what, code, delay)
        self._restart_at[worker.slot] = time.monotonic() + delay


def _tell_serving(ready_w: int) -> None:
    """The worker's one word to its supervisor: it serves."""
    os.write(ready_w, b"s")
    os.close(ready_w)
