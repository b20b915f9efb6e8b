"""The benchmark commands refuse malformed arguments with one line and exit 2."""

import subprocess
import sys
import time

import numpy as np
import pytest

from bench import anomaly_auroc, pinned_bench, settings_ab


@pytest.mark.parametrize(("argv", "message"), [
    (["--setting", "--instances 2", "--point", "Decode:1:1"], "write NAME=FLAGS"),
    (["--setting", "a=", "--point", "Decode:1"], "write METHOD:ITEMS:CONCURRENCY"),
    (["--setting", "a=", "--point", "Sample:1:1"], "METHOD Decode or Encode"),
])
def test_settings_ab_names_a_bad_argument(argv: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_ab.main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_anomaly_auroc_names_a_bad_pair(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        anomaly_auroc.main(["--data-dir", ".", "--pair", "mnist:fashion"])
    assert exited.value.code == 2
    assert "write MODEL:IN:OUT" in capsys.readouterr().err.splitlines()[-1]


def test_auroc_is_one_for_separated_scores_and_a_half_for_equal_ones() -> None:
    inliers, outliers = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])
    assert anomaly_auroc.auroc(inliers, outliers) == 1.0
    assert anomaly_auroc.auroc(outliers, inliers) == 0.0
    assert anomaly_auroc.auroc(inliers, inliers) == 0.5


@pytest.mark.parametrize(("argv", "message"), [
    (["--rounds", "0"], "--rounds: 0 must be above 0"),
    (["--seconds", "four"], "--seconds: 'four' is not a number"),
])
def test_pinned_bench_names_a_bad_argument(argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        pinned_bench.main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_tree_cpu_counts_a_busy_grandchild() -> None:
    busy = "import time\nend = time.process_time() + 2\nwhile time.process_time() < end: pass"
    shell = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "{busy}"; true'])
    try:
        time.sleep(1.0)
        assert pinned_bench.tree_cpu_s(shell.pid) > 0.3  # the shell itself stays near 0
    finally:
        shell.kill()
        shell.wait()
