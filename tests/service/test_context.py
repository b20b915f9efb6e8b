"""RequestContext: the trace id comes from the call's metadata, read only when asked for."""

from __future__ import annotations

import pytest

from service.context import TRACE_ID_CHARS, RequestContext

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(("metadata", "request_id", "trace"), [
    ((("traceparent", TRACEPARENT),), "r1", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ((("x-request-id", "abc"),), "r1", "abc"),
    ((("traceparent", "not-a-traceparent"),), "r1", "r1"),
    ((), "r" * 100, "r" * TRACE_ID_CHARS),
    (None, "", ""),
])
def test_trace_id_prefers_traceparent_then_request_ids(
        metadata: tuple[tuple[str, str], ...] | None, request_id: str, trace: str) -> None:
    context = RequestContext(metadata=lambda: metadata, request_id=request_id)
    assert context.trace_id == trace
