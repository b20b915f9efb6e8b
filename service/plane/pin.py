"""The operator's pin: `REPO/MODEL/pin.json`, the version a RepositoryModelLoad chose.

It lives in the repository, beside the versions, so every worker and every replica that
mounts the repository reads the same pin, and a restart keeps it. Written atomically (a
dot-file renamed over it); absent = no pin (serve by --model-version: 0 = the newest).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from service.plane.repository import parse_canonical_version

PIN_FILE = "pin.json"


class PinError(ValueError):
    """A pin file that cannot be read or does not name a version; says how to fix it."""


def pin_path(repo: Path, model_name: str) -> Path:
    return repo / model_name / PIN_FILE


def read_pin(repo: Path, model_name: str) -> int:
    """The pinned version, or 0 when there is no pin file."""
    path = pin_path(repo, model_name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as err:
        raise PinError(f"{path}: not readable JSON ({err}); fix it or delete it (a "
                       "RepositoryModelLoad rewrites it)") from err
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, int) or parse_canonical_version(str(version)) is None:
        raise PinError(f"{path}: expected {{\"version\": N}} with N >= 1, got {data!r}; fix it "
                       "or delete it")
    return version


def write_pin(repo: Path, model_name: str, version: int) -> None:
    """Pin `version` (0 removes the pin); raises OSError where the repository is read-only."""
    path = pin_path(repo, model_name)
    if version == 0:
        path.unlink(missing_ok=True)
    else:
        write_json(path, {"version": version})


def write_json(path: Path, data: object) -> None:
    """Replace `path` at once: a reader sees the old content or the new, never half of it."""
    fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data) + "\n")
        os.chmod(temp, 0o644)  # mkstemp makes it owner-only; other users' servers may read it
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
