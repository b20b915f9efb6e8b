"""deploy/prometheus/alert-rules.yaml: it queries series the server exports, and promtool's own
rule unit tests fire each alert on the series that should fire it, and on no other.

promtool is in Debian's `prometheus` package (CI installs it); skipped with the reason without it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from service.metrics import SCORE_BUCKETS_NATS
from tests.conftest import ROOT
from tests.deploy.test_deploy import exported

ALERT_RULES = ROOT / "deploy" / "prometheus" / "alert-rules.yaml"
DAY_S = 86400
EXPIRES = {"fresh": 30 * DAY_S, "renew": 5 * DAY_S, "late": 1 * DAY_S}
"""Pod -> the notAfter it serves, in seconds after promtool's time 0."""


def _annotations(pod: str, within: int) -> dict[str, str]:
    return {"summary": f"{pod} serves a TLS certificate that expires within {within} days",
            "description": 'Renew it: check the Certificate and vae_tls_reloads_total{result="refused"}.'}


TLS_TESTS = {
    "interval": "1m",
    "input_series": [
        *({"series": f'vae_tls_certificate_expiry_timestamp_seconds{{pod="{pod}"}}',
           "values": f"{expiry}x30"} for pod, expiry in EXPIRES.items()),
        {"series": 'vae_tls_reloads_total{pod="renew",result="refused"}', "values": "0 0 1x28"},
        {"series": 'vae_tls_reloads_total{pod="fresh",result="refused"}', "values": "0x30"},
        {"series": 'vae_tls_reloads_total{pod="fresh",result="loaded"}', "values": "0 1x29"},
    ],
    "alert_rule_test": [
        {"eval_time": "10m", "alertname": "VaeServeCertificateExpiresSoon", "exp_alerts": []},
        {"eval_time": "20m", "alertname": "VaeServeCertificateExpiresSoon", "exp_alerts": [
            {"exp_labels": {"pod": "renew", "severity": "warning"},
             "exp_annotations": _annotations("renew", 7)},
            {"exp_labels": {"pod": "late", "severity": "warning"},
             "exp_annotations": _annotations("late", 7)},
            {"exp_labels": {"pod": "late", "severity": "critical"},
             "exp_annotations": _annotations("late", 2)}]},
        {"eval_time": "5m", "alertname": "VaeServeCertificateRefused", "exp_alerts": [
            {"exp_labels": {"pod": "renew", "result": "refused", "severity": "warning"},
             "exp_annotations": {
                 "summary": "renew refused new TLS files and serves the previous certificate",
                 "description": "Its log has the reason: TLS files changed and were refused: ..."}}]},
        {"eval_time": "25m", "alertname": "VaeServeCertificateRefused", "exp_alerts": []},
    ],
}
"""The TLS alerts wait `for` 15 minutes; a refusal alerts for the 15 minutes after it."""


def inside(bucket: int) -> float:
    """A score inside vae_score_nats's bucket (SCORE_BUCKETS_NATS[bucket - 1], [bucket]]."""
    return (SCORE_BUCKETS_NATS[bucket - 1] + SCORE_BUCKETS_NATS[bucket]) / 2


Phase = tuple[int, dict[float, int]]
"""(minutes, score -> images scored per minute)."""


def score_series(labels: str, phases: list[Phase]) -> list[dict[str, str]]:
    """promtool input series of vae_score_nats{labels} (buckets and count), one sample a minute."""
    series = []
    for edge in (*SCORE_BUCKETS_NATS, math.inf):
        values, total = ["0"], 0
        for minutes, per_minute in phases:
            step = sum(n for score, n in per_minute.items() if score <= edge)
            values.append(f"{total + step}+{step}x{minutes - 1}")
            total += step * minutes
        le = "+Inf" if edge == math.inf else repr(edge)
        series.append({"series": f'vae_score_nats_bucket{{{labels},le="{le}"}}',
                       "values": " ".join(values)})
    return [*series, {"series": f"vae_score_nats_count{{{labels}}}", "values": series[-1]["values"]}]


TRAINING_MEDIAN_NATS = 30.0
"""The example's TRAINING_MEDIAN in alert-rules.yaml (ALLOWED_SHIFT 1.5, MIN_IMAGES 200)."""
STEADY = {inside(23): 5, inside(24): 5}
"""10 images a minute, median SCORE_BUCKETS_NATS[23] = 29.34 nats: inside the band 30 +- 1.5."""
UP, DOWN = {inside(25): 5, inside(26): 5}, {inside(21): 5, inside(22): 5}
"""Medians 34.9 and 24.68 nats: out of the band."""
SPARSE, SPARSE_UP = {inside(23): 1, inside(24): 1}, {inside(25): 1, inside(26): 1}
"""60 images in 30 minutes: fewer than MIN_IMAGES, so no verdict."""


def _drift(version: str, bound: str, before: dict[float, int], after: dict[float, int]
           ) -> list[dict[str, str]]:
    """An hour of `before`, then an hour of `after`."""
    return score_series(f'namespace="ns",pod="p0",version="{version}",bound="{bound}"',
                        [(60, before), (60, after)])


def _drift_alert(version: str, median_nats: float) -> dict[str, Any]:
    shift = f"{abs(median_nats - TRAINING_MEDIAN_NATS):.1f}"
    return {"exp_labels": {"namespace": "ns", "version": version, "severity": "warning"},
            "exp_annotations": {
                "summary": f"Version {version} in ns: the median score of the last 30 minutes is "
                           f"{shift} nats from the training median; compare recent inputs with "
                           "the training data, and retrain on recent data if they changed",
                "description": 'The median neg_elbo of scored images (vae_score_nats, '
                               'bound="elbo") left the band this rule sets (training median +- '
                               "allowed shift). Higher: inputs the model explains worse than its "
                               "training data (new kinds of images, changed preprocessing). "
                               "Lower: simpler inputs (blank or constant images). The dashboard's "
                               "Anomaly score quantiles panel shows which; docs/deploy.md, "
                               "Watching for drift, says what to do."}}


DRIFT_TESTS = {
    "interval": "1m",
    "input_series": [*_drift("1", "elbo", STEADY, STEADY), *_drift("1", "iwae", STEADY, UP),
                     *_drift("2", "elbo", STEADY, UP), *_drift("3", "elbo", STEADY, DOWN),
                     *_drift("4", "elbo", SPARSE, SPARSE_UP)],
    "promql_expr_test": [{
        "expr": "vae:score_nats_elbo:median30m", "eval_time": "50m",
        "exp_samples": [{"labels": f'vae:score_nats_elbo:median30m{{namespace="ns",version="{v}"}}',
                         "value": SCORE_BUCKETS_NATS[23]} for v in "1234"]}],
    "alert_rule_test": [
        {"eval_time": "59m", "alertname": "VaeScoreDrift", "exp_alerts": []},
        {"eval_time": "80m", "alertname": "VaeScoreDrift", "exp_alerts": []},
        {"eval_time": "110m", "alertname": "VaeScoreDrift", "exp_alerts": [
            _drift_alert("2", SCORE_BUCKETS_NATS[25]), _drift_alert("3", SCORE_BUCKETS_NATS[21])]},
    ],
}
"""Version 1 stays put (its iwae bound moves: the alert reads elbo only), 2 and 3 move at 60m
and 4 moves on too few images. The 30-minute medians of 3 and 2 leave the band at about 68m and
74m; the alert waits 15 minutes, so at 80m both are still pending."""
UNIT_TESTS = {"evaluation_interval": "1m", "tests": [TLS_TESTS, DRIFT_TESTS]}
"""promtool's rule unit tests (JSON is YAML)."""


def promtool_passes(*command: str) -> None:
    """Run promtool with these arguments and require success; skip where it is not installed."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: apt-get install prometheus (CI installs it)")
    done = subprocess.run([promtool, *command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_query_exported_metrics() -> None:
    names = set(re.findall(r"\bvae_[a-z_]+", ALERT_RULES.read_text()))
    assert names and all(exported(name) for name in names), names


def test_alert_rules_fire_on_what_they_should(tmp_path: Path) -> None:
    tests = tmp_path / "alert-rules-test.yaml"
    tests.write_text(json.dumps({"rule_files": [str(ALERT_RULES)], **UNIT_TESTS}))
    promtool_passes("check", "rules", str(ALERT_RULES))
    promtool_passes("test", "rules", str(tests))
