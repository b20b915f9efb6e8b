"""Every Prometheus metric of docs/architecture.md, created once against a registry passed in."""

from __future__ import annotations

import os
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from service.transport.workers import MULTIPROC_ENV

METRIC_NAMES = (
    "vae_requests_total",
    "vae_request_duration_seconds",
    "vae_queue_duration_seconds",
    "vae_compute_duration_seconds",
    "vae_batch_rows",
    "vae_queue_rows",
    "vae_inflight_requests",
    "vae_items_total",
    "vae_model_info",
    "vae_model_loads_total",
    "vae_tls_certificate_expiry_timestamp_seconds",
    "vae_tls_reloads_total",
    "vae_streams_open",
    "vae_score_nats",
)
"""Stable names: dashboards, the HPA and the k8s checks depend on them."""
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Per-image scores sit near 15-60 nats for 8x8 digits, 60-250 for MNIST and 220-400 for
# Fashion-MNIST, and images unlike the training data reach thousands: geometric edges give every
# range the same relative resolution. 4 * 2**(i/8) for i = 0..88 (4 to 8192 nats, 8 buckets per
# doubling, each about 9 % wider than the last; rounded to 4 significant digits for readable `le`
# labels): a median read from them by histogram_quantile is within 0.2 nats of the exact one
# for smooth score distributions at 30 and at 300 nats. 90 buckets x 2 bounds per served version.
SCORE_BUCKETS_NATS = tuple(float(f"{4 * 2 ** (i / 8):.4g}") for i in range(89))
SCORE_BOUNDS = ("elbo", "iwae")
"""The `bound` label of vae_score_nats: elbo observes Score's neg_elbo, iwae its nll."""


class Metrics:
    """The service's metrics; labels are methods, graphs, status codes, the served versions and
    score bounds: all bounded sets.

    With --workers the gauges combine across processes as their multiprocess_mode says:
    queue rows and in-flight calls are summed over live workers, model_info is the max.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("vae_requests", "RPCs finished, by method and status code",
                                ["method", "code"], registry=registry)
        self.request_seconds = Histogram("vae_request_duration_seconds",
                                         "RPC latency in the server", ["method"],
                                         buckets=LATENCY_BUCKETS_S, registry=registry)
        self.queue_seconds = Histogram("vae_queue_duration_seconds",
                                       "Time a request's rows waited in a graph's queue",
                                       ["graph"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.compute_seconds = Histogram("vae_compute_duration_seconds",
                                         "ONNX Runtime time per executed batch", ["graph"],
                                         buckets=LATENCY_BUCKETS_S, registry=registry)
        self.batch_rows = Histogram("vae_batch_rows", "Rows per executed batch", ["graph"],
                                    buckets=ROW_BUCKETS, registry=registry)
        self.queue_rows = Gauge("vae_queue_rows", "Rows waiting in a graph's queue", ["graph"],
                                registry=registry, multiprocess_mode="livesum")
        self.inflight = Gauge("vae_inflight_requests", "RPCs being handled now",
                              registry=registry, multiprocess_mode="livesum")
        self.items = Counter("vae_items", "Items (images or latents) returned, by method",
                             ["method"], registry=registry)
        self.model_info = Gauge("vae_model_info", "The served model version and provider (= 1)",
                                ["version", "provider"], registry=registry,
                                multiprocess_mode="livemax")
        self.streams_open = Gauge("vae_streams_open", "Long-lived streams (health Watch, "
                                  "reflection) open now, by port (grpc, health)", ["port"],
                                  registry=registry, multiprocess_mode="livesum")
        self.model_loads = Counter("vae_model_loads", "Model versions switched to while serving, "
                                   "or refused at start-up or while serving, by result (loaded, "
                                   "refused; error: a rescan of the repository that failed)",
                                   ["result"], registry=registry)
        self.score_nats = Histogram("vae_score_nats", "Per-image Score results in nats, by the "
                                    "version that scored and the bound (elbo: neg_elbo, iwae: "
                                    "nll, the importance-weighted bound)", ["version", "bound"],
                                    buckets=SCORE_BUCKETS_NATS, registry=registry)

    def retire_model(self, version: str, provider: str) -> None:
        """A version no longer served: its info drops to 0, and its series go where they can (a
        worker's multiprocess file keeps them, the scores' counts frozen; prometheus_client
        cannot remove them there)."""
        self.model_info.labels(version, provider).set(0)
        if MULTIPROC_ENV not in os.environ:
            self.model_info.remove(version, provider)
            for bound in SCORE_BOUNDS:
                self.score_nats.remove(version, bound)


class TlsMetrics:
    """The certificate on --port; created only with TLS, so a plaintext server has neither.

    With --workers the expiry is the earliest among live workers (each reloads on its own).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.expiry = Gauge("vae_tls_certificate_expiry_timestamp_seconds",
                            "notAfter of the TLS certificate served on --port, in Unix time",
                            registry=registry, multiprocess_mode="livemin")
        self.reloads = Counter("vae_tls_reloads", "Changed TLS files tried while serving, by "
                               "result (loaded, refused)", ["result"], registry=registry)


class GraphObserver:
    """Feeds one graph's batcher events into the metrics (implements BatchObserver)."""

    def __init__(self, metrics: Metrics, graph: str) -> None:
        self._queue_rows = metrics.queue_rows.labels(graph)
        self._queue_seconds = metrics.queue_seconds.labels(graph)
        self._compute_seconds = metrics.compute_seconds.labels(graph)
        self._batch_rows = metrics.batch_rows.labels(graph)

    def queue_rows(self, rows: int) -> None:
        self._queue_rows.set(rows)

    def waited(self, seconds: float) -> None:
        self._queue_seconds.observe(seconds)

    def executed(self, rows: int, seconds: float) -> None:
        self._batch_rows.observe(rows)
        self._compute_seconds.observe(seconds)


class ScoreObserver:
    """Feeds one served version's per-image Score results into vae_score_nats.

    Create one when the version becomes current (its series exist from then on);
    Metrics.retire_model drops them when it stops being served.
    """

    def __init__(self, metrics: Metrics, version: str) -> None:
        self._children = [metrics.score_nats.labels(version, bound) for bound in SCORE_BOUNDS]

    def observe(self, neg_elbo: np.ndarray, nll: np.ndarray) -> None:
        """One observation per image of each bound, from Score's [N] outputs (finite nats)."""
        for child, values in zip(self._children, (neg_elbo, nll), strict=True):
            for value in values.tolist():
                child.observe(value)


def serve_metrics(port: int, host: str, registry: CollectorRegistry) -> WSGIServer:
    """Expose /metrics over HTTP on its own port (0 picks one: see .server_port)."""
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server
