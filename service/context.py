"""RequestContext: what travels with a request from its front down to the batcher that runs it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

NO_NAMES: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One request's deadline, wanted version and trace id, and its front's words for inputs."""

    deadline_s: float | None = None
    """On the time.monotonic() clock; rows still queued past it are dropped before compute."""
    version: int = 0
    """The version the client asked for; 0 = whichever is current."""
    trace_id: str = ""
    """The W3C traceparent's trace id (or the v2 request id), logged with a failed batch."""
    names: Mapping[str, str] = field(default_factory=lambda: NO_NAMES)
    """Declared input name -> the name the client used (vae.v1 says images where v2 says x)."""

    def wire_name(self, name: str) -> str:
        """The client's name for input `name`, for error messages."""
        return self.names.get(name, name)


NO_CONTEXT = RequestContext()
"""No deadline, the current version, no trace: for callers inside the server (warm-up, tests)."""
