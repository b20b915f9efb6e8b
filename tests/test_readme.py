"""The README's commands work: make targets exist, vae-client lines run against a real server."""

import asyncio
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from service.client import main as client_main
from service.images import write_png
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S)
LINES = [line.split("#")[0].strip() for block in BLOCKS for line in block.splitlines()]


def test_make_targets_in_the_readme_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = {w.split()[1] for w in LINES if w.startswith("make ")}
    assert {"serve", "test"} <= targets
    assert all(re.search(rf"^{t}:", makefile, flags=re.M) for t in targets)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text().splitlines()


def _run_client_lines(port: int, folder: Path) -> list[int]:
    write_png(folder / "noisy.png", np.random.default_rng(0).random((8, 8)).astype(np.float32))
    codes = []
    for line in (x for x in LINES if x.startswith(".venv/bin/vae-client")):
        argv = ["--target", f"127.0.0.1:{port}", *shlex.split(line)[1:]]
        try:
            codes.append(client_main(argv))
        except SystemExit as done:  # --help
            codes.append(int(done.code or 0))
    return codes


async def test_readme_client_commands_succeed(server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    codes = await asyncio.to_thread(_run_client_lines, server.port, tmp_path)
    assert codes and all(code == 0 for code in codes)
    assert (tmp_path / "grid.png").exists() and (tmp_path / "clean.png").exists()


@pytest.mark.parametrize("script", ["vae-train", "vae-export", "vae-serve", "vae-client"])
def test_console_scripts_answer_help(script: str) -> None:
    import subprocess

    out = subprocess.run([str(ROOT / ".venv" / "bin" / script), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "usage:" in out.stdout
