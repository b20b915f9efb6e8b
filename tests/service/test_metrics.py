"""service/metrics.py: per-image scores land in vae_score_nats as the exposition shows them."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import SCORE_BUCKETS_NATS, Metrics, ScoreObserver
from service.transport.workers import MULTIPROC_ENV
from tests.conftest import ROOT

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scores(text: str) -> Series:
    """vae_score_nats samples of an exposition: (sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) if family.name == "vae_score_nats"
            for s in family.samples}


def _expected(version: str, bound: str, values: list[float]) -> Series:
    """The exposition of `values` observed under (version, bound): cumulative buckets, count, sum."""
    labels = (("bound", bound), ("version", version))
    edges = [*SCORE_BUCKETS_NATS, math.inf]
    series: Series = {
        ("vae_score_nats_bucket", tuple(sorted((*labels, ("le", _le(edge)))))):
            float(sum(v <= edge for v in values)) for edge in edges}
    series[("vae_score_nats_count", labels)] = float(len(values))
    series[("vae_score_nats_sum", labels)] = math.fsum(values)
    return series


def _le(edge: float) -> str:
    return "+Inf" if edge == math.inf else repr(edge)


def test_score_edges_are_geometric_from_4_to_8192_nats() -> None:
    assert SCORE_BUCKETS_NATS[0] == 4 and SCORE_BUCKETS_NATS[-1] == 8192
    ratios = np.diff(np.log2(SCORE_BUCKETS_NATS))
    assert np.allclose(ratios, 1 / 8, atol=2e-3), ratios


def test_score_observer_puts_each_image_in_its_bucket_by_version_and_bound() -> None:
    registry = CollectorRegistry()
    observer = ScoreObserver(Metrics(registry), "3")
    neg_elbo = [3.0, 29.5, 32.0, 32.5, 250.0, 9000.0]  # 32.0 is an edge: le is inclusive
    nll = [2.0, 28.0, 31.0, 31.5, 240.0, 8191.0]
    observer.observe(np.array(neg_elbo, np.float32), np.array(nll, np.float32))
    observer.observe(np.array([30.0], np.float32), np.array([29.0], np.float32))
    got = _scores(generate_latest(registry).decode())
    assert got == _expected("3", "elbo", [*neg_elbo, 30.0]) | _expected("3", "iwae", [*nll, 29.0])
    assert got[("vae_score_nats_bucket", (("bound", "elbo"), ("le", "32.0"), ("version", "3")))] == 4


def test_retire_model_drops_only_that_versions_scores() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for version in ("1", "2"):
        ScoreObserver(metrics, version).observe(np.array([30.0], np.float32),
                                                np.array([29.0], np.float32))
    metrics.retire_model("1", "CPUExecutionProvider")
    got = _scores(generate_latest(registry).decode())
    assert got == _expected("2", "elbo", [30.0]) | _expected("2", "iwae", [29.0])


SCORE_IN_WORKERS = """
import numpy as np
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from service.metrics import Metrics, ScoreObserver
metrics = Metrics(CollectorRegistry())
for version in ("1", "2"):
    ScoreObserver(metrics, version).observe(np.array([30.0], np.float32), np.array([29.0], np.float32))
metrics.retire_model("1", "CPUExecutionProvider")
scrape = CollectorRegistry()
multiprocess.MultiProcessCollector(scrape)
print(generate_latest(scrape).decode())
"""
"""A --workers process: its histograms go to the multiprocess files; retiring warns not."""


def test_scores_under_workers_keep_retired_counts_frozen(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-W", "error", "-c", SCORE_IN_WORKERS], cwd=ROOT,
                          env={**os.environ, MULTIPROC_ENV: str(tmp_path)}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    got = _scores(done.stdout)
    assert got == _expected("1", "elbo", [30.0]) | _expected("1", "iwae", [29.0]) \
        | _expected("2", "elbo", [30.0]) | _expected("2", "iwae", [29.0])
