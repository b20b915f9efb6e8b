"""RequestContext: what travels with a request from its front down to the batcher that runs it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

NO_NAMES: Mapping[str, str] = MappingProxyType({})
TRACE_ID_CHARS = 64
"""A longer trace id is cut: it goes into log lines."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One request's deadline, wanted version, trace id and company, and its front's words for
    its inputs."""

    deadline_s: float | None = None
    """On the time.monotonic() clock; rows still queued past it are dropped before compute."""
    version: int = 0
    """The version the client asked for; 0 = whichever is current."""
    names: Mapping[str, str] = field(default_factory=lambda: NO_NAMES)
    """Declared input name -> the name the client used (vae.v1 says images where v2 says x)."""
    company: int = 0
    """Other calls in flight when this one was admitted: with company, a request queues to
    be batched; alone, it may run at once on the event loop."""

    metadata: Callable[[], Iterable[tuple[str, object]] | None] | None = None
    """The call's metadata, read only when a trace id is wanted (a failed batch)."""
    request_id: str = ""
    """The v2 request id: the trace id when the metadata names none."""

    @property
    def trace_id(self) -> str:
        """The trace id of a W3C `traceparent` header (00-TRACE-SPAN-FLAGS), else
        `x-request-id`, else the request id; at most TRACE_ID_CHARS characters."""
        for key, value in (self.metadata() or ()) if self.metadata is not None else ():
            if key == "traceparent" and isinstance(value, str) and value.count("-") == 3:
                return value.split("-")[1][:TRACE_ID_CHARS]
            if key == "x-request-id" and isinstance(value, str):
                return value[:TRACE_ID_CHARS]
        return self.request_id[:TRACE_ID_CHARS]

    def wire_name(self, name: str) -> str:
        """The client's name for input `name`, for error messages."""
        return self.names.get(name, name)


NO_CONTEXT = RequestContext()
"""No deadline, the current version, no trace: for callers inside the server (warm-up, tests)."""
