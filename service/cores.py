"""How many cores this process may use: its CPU affinity, capped by its cgroup's CPU quota.

taskset and a container's cpuset show in the affinity; a Kubernetes CPU limit does not: it is
a CFS quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`), and a pod limited to 2 CPUs on a
16-core node still sees 16 cores. Thread pools sized by the affinity alone would be
throttled there, and a CPU share measured against 16 cores would never look full.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup's quota allows per period (2.0 for a limit of 2), or None: no quota,
    or no cgroup file to read (not Linux, or not mounted)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000"
        if quota == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())  # v1: -1 = none
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cores(root: Path = CGROUP_ROOT) -> int:
    """The cores this process may run on, capped by its CPU quota rounded up (at least 1)."""
    cores = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    return cores if limit is None else max(1, min(cores, math.ceil(limit)))
