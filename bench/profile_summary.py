"""Where a server's event-loop time goes, from a py-spy raw profile (collapsed stacks).

.venv/bin/py-spy record --gil --format raw -o prof.txt -p PID -d 8   (while bench.load runs)
python -m bench.profile_summary prof.txt [--top 12]

Prints the share of samples per function, inclusive (the function and what it calls) and
self (its own lines), as markdown tables. With --gil only the thread holding the GIL is
sampled: that is the event loop's CPU, what limits requests/s. `Handle._run` self time is
grpc's Cython code (the C call handling below Python), the same in any grpc.aio server.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from service.help_format import DefaultsHelpFormatter

ENTRY_POINTS = {"<module>", "run", "main", "_run_code", "_run_module_as_main", "Runner.run",
                "BaseEventLoop.run_until_complete", "BaseEventLoop.run_forever", "serve_process",
                "BaseEventLoop._run_once", "Handle._run", "Thread._bootstrap",
                "Thread._bootstrap_inner", "Thread.run"}
"""Frames on every stack: their inclusive share says nothing."""
FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*):\d+\)$")


def _function(frame: str) -> str:
    """'name (path/file.py:LINE)' -> 'name (file.py)': lines of one function count together."""
    match = FRAME.match(frame)
    return frame if match is None else f"{match['name']} ({Path(match['file']).name})"


def summarise(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        functions = [_function(f) for f in stack.split(";")]
        total += n
        own[functions[-1]] += n
        for function in set(functions):
            inclusive[function] += n
    return total, inclusive, own


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("profile", type=Path, help="py-spy record --format raw output")
    p.add_argument("--top", type=int, default=12, help="rows per table")
    args = p.parse_args(argv)
    total, inclusive, own = summarise(args.profile)
    print(f"{total} samples\n\n| inclusive | function |\n|---|---|")
    shown = [(f, n) for f, n in inclusive.most_common() if f.split(" (")[0] not in ENTRY_POINTS]
    for function, n in shown[: args.top]:
        print(f"| {n / total:.1%} | {function} |")
    print("\n| self | function |\n|---|---|")
    for function, n in own.most_common(args.top):
        print(f"| {n / total:.1%} | {function} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
