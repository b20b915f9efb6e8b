"""Keep grpc's reports of client-caused failures to one rate-limited line, without a traceback.

grpc.aio logs at ERROR, with a traceback, when it cannot send an answer to a call its client
already left (ExecuteBatchError, e.g. a deadline that passed while the answer was ready).
That is the client's doing, not a server fault, and a flood of them would bury real errors.
"""

from __future__ import annotations

import logging
import time

CLIENT_CAUSED = ("ExecuteBatchError", "Failed 'execute_batch'")
"""Markers of grpc log records about calls whose client is gone."""
QUIET_S = 10.0


class ClientNoiseFilter(logging.Filter):
    """One WARNING line per QUIET_S seconds for client-caused grpc errors; the rest pass as is."""

    def __init__(self) -> None:
        super().__init__()
        self._last_s = -QUIET_S
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {type(record.exc_info[1]).__name__} {record.exc_info[1]}"
        if not any(marker in text for marker in CLIENT_CAUSED):
            return True
        now = time.monotonic()
        if now - self._last_s < QUIET_S:
            self._suppressed += 1
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = (f"a client left before its answer was sent (deadline or cancel); "
                      f"{self._suppressed} more like it in the last {QUIET_S:.0f} s not logged")
        record.args, record.exc_info, record.exc_text = (), None, None
        self._last_s, self._suppressed = now, 0
        return True


def install() -> None:
    """Attach the filter to grpc's own logger (idempotent)."""
    grpc_logger = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, ClientNoiseFilter) for f in grpc_logger.filters):
        grpc_logger.addFilter(ClientNoiseFilter())
