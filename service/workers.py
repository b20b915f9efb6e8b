"""Pre-forked workers: N server processes on one port (SO_REUSEPORT), one metrics endpoint.

The parent forks before any gRPC object exists (grpc does not survive a fork), then only
supervises: it restarts a worker that dies, with backoff; it passes SIGTERM, SIGINT and
SIGHUP to every worker; and it serves /metrics for all of them with prometheus_client's
multiprocess mode (each worker writes its samples to files in a shared folder: no scraping
of workers, and nothing lost when one restarts). The kernel spreads *connections* across
the workers, so a client needs several connections to reach several of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace

from service.config import ServerConfig, usable_cores

logger = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STATUS_ENV = "VAE_WORKERS_STATUS_DIR"
"""Set for the workers: a folder where each reports the version it serves (service/watcher.py)."""
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STARTUP_ERROR = 2
"""A worker's exit code for a bad setting or model: restarting cannot help, so all stop."""


def worker_config(config: ServerConfig, workers: int) -> ServerConfig:
    """What each worker runs: the port shared, metrics left to the parent, cores split."""
    threads = config.intra_op_threads or max(1, usable_cores() // workers)
    return replace(config, metrics_port=-1, intra_op_threads=threads)


def _exit_before_serving(signum: int, frame: object) -> None:
    """A stop while the worker still loads: nothing was admitted, so nothing to drain."""
    os._exit(0)


class Supervisor:
    """Forks and keeps `workers` processes running `serve_one(config)` until a signal."""

    def __init__(self, config: ServerConfig, workers: int,
                 serve_one: Callable[[ServerConfig], int]) -> None:
        self.config = config
        self.workers = workers
        self.serve_one = serve_one
        self.children: dict[int, int] = {}
        """pid -> worker slot."""
        self.stopping = False
        self._restarts = [0] * workers

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 when every worker drained and exited 0."""
        folder = tempfile.mkdtemp(prefix="vae-serve-metrics-")
        os.environ[MULTIPROC_ENV] = folder  # before prometheus_client is imported anywhere
        os.environ[STATUS_ENV] = tempfile.mkdtemp(prefix="vae-serve-workers-")
        for slot in range(self.workers):
            self._fork(slot)
        metrics = self._serve_metrics(folder) if self.config.metrics_port >= 0 else None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        signal.signal(signal.SIGHUP, self._forward)
        logger.info("%d workers on %s:%d (metrics :%s)", self.workers, self.config.host,
                    self.config.port, self.config.metrics_port)
        code = self._supervise(folder)
        if metrics is not None:
            metrics.shutdown()
        return code

    def _fork(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker; serve() replaces these handlers once it is serving
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, _exit_before_serving)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            code = STARTUP_ERROR
            try:
                code = self.serve_one(worker_config(self.config, self.workers))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = slot

    def _serve_metrics(self, folder: str):  # type: ignore[no-untyped-def]
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=folder)
        server, _ = start_http_server(self.config.metrics_port, addr=self.config.host,
                                      registry=registry)
        return server

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        self._forward(signum, frame)

    def _forward(self, signum: int, frame: object) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _supervise(self, folder: str) -> int:
        from prometheus_client import multiprocess

        worst = 0
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            multiprocess.mark_process_dead(pid, folder)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                worst = max(worst, abs(code))
                continue
            if code == STARTUP_ERROR:
                logger.error("worker %d stopped at start-up (exit 2); stopping all", slot)
                self.stopping = True
                self._forward(signal.SIGTERM, None)
                worst = STARTUP_ERROR
                continue
            delay = RESTART_BACKOFF_S[min(self._restarts[slot], len(RESTART_BACKOFF_S) - 1)]
            self._restarts[slot] += 1
            logger.warning("worker %d (pid %d) exited with %d; restarting it in %.0f s", slot,
                           pid, code, delay)
            time.sleep(delay)
            if not self.stopping:
                self._fork(slot)
        return worst
