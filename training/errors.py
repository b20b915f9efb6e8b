"""Errors a user can fix; the CLI prints them on one line and exits 2."""


class UsageError(Exception):
    """Bad input from the user: a flag, a file or a run folder. The message says what to do."""
