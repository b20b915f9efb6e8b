"""One `--help` style for every console script: each default printed once, never "None"."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help already states it or there is no value to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default is None or isinstance(action.default, bool):
            return text
        return super()._get_help_string(action)
