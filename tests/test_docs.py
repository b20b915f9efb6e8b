"""The docs agree with the code: every setting, metric and front they list is the code's own."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields

from service.config import ServerConfig
from service.metrics import METRIC_NAMES
from tests.conftest import ROOT

DOCS = ROOT / "docs"
HISTORY = re.compile(r"this stop|before \(commit|once had|previous default|as before|final code of",
                     re.IGNORECASE)
"""Phrases that place a statement in the project's history instead of saying what is."""


def test_architecture_lists_exactly_the_metric_names() -> None:
    text = (DOCS / "architecture.md").read_text().split("### Metric names", 1)[1]
    table = re.findall(r"^\| `(vae_\w+)` \|", text.split("\n## ", 1)[0], flags=re.M)
    assert sorted(table) == sorted(METRIC_NAMES)


def test_serving_settings_table_names_every_flag() -> None:
    text = (DOCS / "serving.md").read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    flags = {f"--{f.name.replace('_', '-')}" for f in fields(ServerConfig)}
    assert flags - set(re.findall(r"`(--[a-z-]+)`", text)) == set()


def test_help_names_both_fronts() -> None:
    shown = subprocess.run([sys.executable, "-m", "service.cli", "--help"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert "vae.v1.VaeService" in shown and "inference.GRPCInferenceService" in shown


def test_docs_say_what_is_not_when_it_changed() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    found = [f"{page.name}:{n}: {line.strip()}" for page in pages
             for n, line in enumerate(page.read_text().splitlines(), 1) if HISTORY.search(line)]
    assert found == []
