"""A real Prometheus scrapes a real server and a 2-worker server; every query of the Grafana
dashboard and the HPA's adapter rule answers with the values the test's own traffic implies.

Needs Debian's `prometheus` package (CI installs it); skipped with the reason without it.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from service.fronts.tensors import to_tensor
from service.metrics import SCORE_BUCKETS_NATS
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import ROOT, free_port, spawn_server
from tests.deploy.test_alert_rules import inside, promtool_passes, score_series

DASHBOARD = ROOT / "deploy" / "grafana" / "vae-serve.json"
ADAPTER_RULES = ROOT / "deploy" / "prometheus" / "adapter-rules.yaml"
NAMESPACE = "metrics-test"
PODS = ("single", "workers")
SCRAPE_S = 1
WINDOW = "10m"
"""Every rate() reads this window: longer than the test, so each counter's whole increase
during the traffic is in it and rate = increase / 600 s, give or take Prometheus's
extrapolation of half a scrape interval at the series' ends."""
WINDOW_S = 600
SAMPLED_BEFORE_S = 12
"""Scrapes of the warm-up values before the traffic: with about 15 s between a series' first
and last sample, the extrapolation adds at most 10 % to a rate."""
DECODES_OK, DECODES_BAD, SAMPLES, SAMPLE_COUNT = 30, 10, 5, 4
"""Per pod, after the warm-up: calls that succeed, calls refused as INVALID_ARGUMENT."""


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries() -> dict[str, str]:
    """'panel title/refId' -> PromQL, with the dashboard's variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    fill = {"$namespace": NAMESPACE, "$pod": ".*", "$__rate_interval": WINDOW}
    queries = {}
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in fill.items():
                expr = expr.replace(name, value)
            queries[f"{panel['title']}/{target['refId']}"] = expr
    return queries


def hpa_query() -> str:
    """The adapter's metricsQuery as prometheus-adapter expands it for the HPA's pods."""
    match = re.search(r"metricsQuery: '(.+)'", ADAPTER_RULES.read_text())
    assert match, f"{ADAPTER_RULES} has no metricsQuery"
    return (match.group(1).replace("<<.GroupBy>>", "pod").replace("<<.Series>>", "vae_queue_rows")
            .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{"|".join(PODS)}"'))


def _config(metrics_ports: dict[str, int]) -> str:
    jobs = "\n".join(
        f"  - job_name: {pod}\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port}']\n"
        f"        labels: {{namespace: {NAMESPACE}, pod: {pod}}}"
        for pod, port in metrics_ports.items())
    return f"global:\n  scrape_interval: {SCRAPE_S}s\nscrape_configs:\n{jobs}\n"


class Prometheus:
    """Prometheus's HTTP API, instant queries only."""

    def __init__(self, port: int, grpc_ports: dict[str, int]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.grpc_ports = grpc_ports

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def by(self, expr: str, *labels: str) -> dict[str, float]:
        """Series of an instant query keyed by the values of `labels`, joined with '/'."""
        return {"/".join(s["metric"].get(label, "") for label in labels): float(s["value"][1])
                for s in self.query(expr)}


@pytest.fixture
async def prometheus(tmp_path: Path, model_repo: Path) -> AsyncIterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not found: apt-get install prometheus (CI installs it)")
    metrics_ports = {pod: free_port() for pod in PODS}
    single = await spawn_server(model_repo, metrics_port=str(metrics_ports["single"]))
    workers = await spawn_server(model_repo, metrics_port=str(metrics_ports["workers"]),
                                 workers="2")
    (tmp_path / "prometheus.yml").write_text(_config(metrics_ports))
    web = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield Prometheus(web, {"single": single[1], "workers": workers[1]})
    finally:
        process.terminate()
        process.wait(timeout=30)
        for server, _ in (single, workers):
            server.terminate()
            await server.wait()


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    give_up = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        await asyncio.sleep(0.25)


def _total_requests(prometheus: Prometheus) -> dict[str, float]:
    try:
        return prometheus.by(f'sum by (pod) (vae_requests_total{{namespace="{NAMESPACE}"}})',
                             "pod")
    except OSError:  # Prometheus still starting
        return {}


async def _traffic(port: int, decodes_ok: int, decodes_bad: int, samples: int) -> None:
    """Known calls over 4 connections (so both workers of a 2-worker server get some)."""
    good = vae_pb2.DecodeRequest(latents=to_tensor(np.zeros((1, 8), np.float32)))
    bad = vae_pb2.DecodeRequest(latents=to_tensor(np.zeros((1, 3), np.float32)))
    sample = vae_pb2.SampleRequest(count=SAMPLE_COUNT, seed=1)
    calls = [("Decode", good)] * decodes_ok + [("Decode", bad)] * decodes_bad
    calls += [("Sample", sample)] * samples
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(4)]
    stubs = [vae_pb2_grpc.VaeServiceStub(c) for c in channels]
    for i, (method, request) in enumerate(calls):
        try:
            await getattr(stubs[i % 4], method)(request, timeout=60, wait_for_ready=True)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    for channel in channels:
        await channel.close()


def _rate(increase: float) -> float:
    return increase / WINDOW_S


def _assert_near(got: dict[str, float], expected: dict[str, float], tolerance: float,
                 what: str) -> None:
    assert got.keys() == expected.keys(), f"{what}: series {sorted(got)}, not {sorted(expected)}"
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=tolerance, abs_tol=1e-9), \
            f"{what} {key}: {got[key]}, expected {value} within {tolerance:.0%}"


def _assert_finite(got: dict[str, float], keys: set[str], what: str) -> None:
    assert keys <= got.keys(), f"{what}: series {sorted(got)}, expected {sorted(keys)}"
    for key in keys:
        assert math.isfinite(got[key]) and 0 < got[key] < 5, f"{what} {key}: {got[key]}"


async def test_dashboard_and_hpa_queries_through_a_real_prometheus(prometheus: Prometheus
                                                                   ) -> None:
    # Warm-up: every series the traffic touches exists, and is scraped, before the traffic.
    for port in prometheus.grpc_ports.values():
        await _traffic(port, 1, 1, 1)
    await _until(lambda: _total_requests(prometheus) == dict.fromkeys(PODS, 3.0),
                 "the warm-up calls in Prometheus")
    await asyncio.sleep(SAMPLED_BEFORE_S)
    for port in prometheus.grpc_ports.values():
        await _traffic(port, DECODES_OK, DECODES_BAD, SAMPLES)
    per_pod = 3.0 + DECODES_OK + DECODES_BAD + SAMPLES
    await _until(lambda: _total_requests(prometheus) == dict.fromkeys(PODS, per_pod),
                 "the traffic in Prometheus (the 2-worker pod's counters summed)")
    await asyncio.sleep(2 * SCRAPE_S)

    pods = len(PODS)
    calls, bad = pods * (DECODES_OK + DECODES_BAD + SAMPLES), pods * DECODES_BAD
    q = dashboard_queries()
    rate_tolerance = 0.15  # Prometheus extrapolates each series by up to 1.5 scrape intervals
    _assert_near(prometheus.by(q["Requests/s/A"]), {"": _rate(calls)}, rate_tolerance,
                 "Requests/s")
    _assert_near(prometheus.by(q["Error ratio/A"]), {"": bad / calls}, 0.05, "Error ratio")
    _assert_finite(prometheus.by(q["p99 latency/A"]), {""}, "p99 latency")
    _assert_near(prometheus.by(q["Serving pods / model/A"], "version", "provider"),
                 {"1/CPUExecutionProvider": pods}, 0, "Serving pods / model")
    _assert_near(prometheus.by(q["Request rate by method/A"], "method"),
                 {"Decode": _rate(pods * (DECODES_OK + DECODES_BAD)),
                  "Sample": _rate(pods * SAMPLES)}, rate_tolerance, "Request rate by method")
    _assert_near(prometheus.by(q["Error rate by code/A"], "code"),
                 {"INVALID_ARGUMENT": _rate(bad)}, rate_tolerance, "Error rate by code")
    _assert_near(prometheus.by(q["Items per second by method/A"], "method"),
                 {"Decode": _rate(pods * DECODES_OK),
                  "Sample": _rate(pods * SAMPLES * SAMPLE_COUNT)}, rate_tolerance,
                 "Items per second by method")
    _assert_near(prometheus.by(q["Requests in flight/A"], "pod"), dict.fromkeys(PODS, 0.0), 0,
                 "Requests in flight")
    for key in ("Request latency p50 / p99 by method/A", "Request latency p50 / p99 by method/B",
                "Mean request latency by method/A"):
        _assert_finite(prometheus.by(q[key], "method"), {"Decode", "Sample"}, key)
    for key in ("Queue wait p50 / p99 by graph/A", "Queue wait p50 / p99 by graph/B",
                "Compute p50 / p99 by graph/A", "Compute p50 / p99 by graph/B"):
        _assert_finite(prometheus.by(q[key], "graph"), {"decoder"}, key)
    batch_rows = prometheus.by(q["Mean batch size by graph/A"], "graph")
    assert 1 <= batch_rows["decoder"] <= SAMPLE_COUNT, batch_rows  # calls one at a time
    _assert_near({"decoder": prometheus.by(q["Batches per second by graph/A"], "graph")["decoder"]},
                 {"decoder": _rate(pods * (DECODES_OK + SAMPLES))}, rate_tolerance,
                 "Batches per second by graph")
    _assert_near(prometheus.by(q["Queued rows by pod and graph/A"], "pod", "graph"),
                 {f"{p}/{g}": 0.0 for p in PODS for g in ("decoder", "encoder", "scorer")}, 0,
                 "Queued rows by pod and graph")
    _assert_near(prometheus.by(q["Queued rows per pod (HPA input)/A"], "pod"),
                 dict.fromkeys(PODS, 0.0), 0, "Queued rows per pod")
    _assert_near(prometheus.by(hpa_query(), "pod"), dict.fromkeys(PODS, 0.0), 0,
                 "the HPA's vae_queue_rows (prometheus-adapter rule)")
    for ref in "ABC":  # no Score calls: no quantile (test_score_quantiles_panel reads values)
        scores = prometheus.by(q[f"Anomaly score quantiles/{ref}"], "version", "bound")
        assert all(math.isnan(v) for v in scores.values()), scores
    assert len(q) == 22, f"the dashboard has {len(q)} queries; check the new ones here"


SCORED = {"elbo": 23, "iwae": 40}
"""Bound -> the first of four adjacent buckets that get 1, 4, 4 and 1 images a minute per pod:
p10, p50 and p90 are then the upper edges of the first three."""


def test_score_quantiles_panel(tmp_path: Path) -> None:
    """The panel's queries, evaluated by promtool over two pods' synthetic scores."""
    q = dashboard_queries()
    series = [s for pod in PODS for bound, first in SCORED.items()
              for s in score_series(f'namespace="{NAMESPACE}",pod="{pod}",version="7",'
                                    f'bound="{bound}"',
                                    [(10, {inside(first + i): n for i, n in enumerate((1, 4, 4, 1))})])]
    tests = [{"expr": q[f"Anomaly score quantiles/{ref}"], "eval_time": "10m",
              "exp_samples": [{"labels": f'{{bound="{bound}",version="7"}}',
                               "value": SCORE_BUCKETS_NATS[first + i]}
                              for bound, first in SCORED.items()]}
             for i, ref in enumerate("ABC")]
    file = tmp_path / "panel-test.yaml"
    file.write_text(json.dumps({"rule_files": [], "tests": [
        {"interval": "1m", "input_series": series, "promql_expr_test": tests}]}))
    promtool_passes("test", "rules", str(file))
