"""deploy/prometheus/alert-rules.yaml: it queries series the server exports, and promtool's own
rule unit tests fire each alert on the series that should fire it, and on no other.

promtool is in Debian's `prometheus` package (CI installs it); skipped with the reason without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.deploy.test_deploy import exported

ALERT_RULES = ROOT / "deploy" / "prometheus" / "alert-rules.yaml"
DAY_S = 86400
EXPIRES = {"fresh": 30 * DAY_S, "renew": 5 * DAY_S, "late": 1 * DAY_S}
"""Pod -> the notAfter it serves, in seconds after promtool's time 0."""


def _annotations(pod: str, within: int) -> dict[str, str]:
    return {"summary": f"{pod} serves a TLS certificate that expires within {within} days",
            "description": 'Renew it: check the Certificate and vae_tls_reloads_total{result="refused"}.'}


UNIT_TESTS = {
    "evaluation_interval": "1m",
    "tests": [{
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
    }],
}
"""promtool's rule unit tests (JSON is YAML): the alerts wait `for` 15 minutes; a refusal
alerts for the 15 minutes after it."""


def test_alert_rules_query_exported_metrics() -> None:
    names = set(re.findall(r"\bvae_[a-z_]+", ALERT_RULES.read_text()))
    assert names and all(exported(name) for name in names), names


def test_alert_rules_fire_on_what_they_should(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: apt-get install prometheus (CI installs it)")
    tests = tmp_path / "alert-rules-test.yaml"
    tests.write_text(json.dumps({"rule_files": [str(ALERT_RULES)], **UNIT_TESTS}))
    for command in (["check", "rules", str(ALERT_RULES)], ["test", "rules", str(tests)]):
        done = subprocess.run([promtool, *command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
