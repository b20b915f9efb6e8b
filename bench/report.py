"""How every benchmark reports: the command that made a table, and the table written and shown."""

from __future__ import annotations

import sys
from pathlib import Path


def command_line(module: str, argv: list[str] | None) -> str:
    """`python -m MODULE ARGS` as the user typed it, for the table's heading."""
    return " ".join(["python -m", module, *(argv if argv is not None else sys.argv[1:])])


def publish(out: Path, text: str) -> None:
    """Write the report to `out` (its folder made if needed) and print it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
