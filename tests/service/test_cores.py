"""usable_cores caps the CPU affinity by a cgroup's CPU quota, as a Kubernetes CPU limit sets it."""

import math
import os
from pathlib import Path

import pytest

from service.cores import cgroup_cpu_limit, usable_cores


def cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


@pytest.mark.parametrize("files, limit", [
    ({"cpu.max": "200000 100000"}, 2.0),
    ({"cpu.max": "150000 100000"}, 1.5),
    ({"cpu.max": "max 100000"}, None),
    ({"cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_period_us": "100000"}, 0.5),
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    ({}, None),
], ids=["v2 limit 2", "v2 limit 1.5", "v2 no limit", "v1 limit 0.5", "v1 no limit", "none"])
def test_the_quota_is_read_from_cgroup_v2_or_v1(tmp_path: Path, files: dict[str, str],
                                                limit: float | None) -> None:
    assert cgroup_cpu_limit(cgroup(tmp_path, files)) == limit


def test_a_quota_caps_the_affinity_rounded_up(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(cgroup(tmp_path / "none", {})) == affinity
    assert usable_cores(cgroup(tmp_path / "half", {"cpu.max": "50000 100000"})) == 1
    quota = cgroup(tmp_path / "big", {"cpu.max": f"{(affinity + 3) * 100000} 100000"})
    assert usable_cores(quota) == affinity  # a quota above the affinity leaves it
    if affinity >= 2:
        limit = cgroup(tmp_path / "limit", {"cpu.max": "150000 100000"})
        assert usable_cores(limit) == math.ceil(1.5)
