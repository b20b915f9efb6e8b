"""Long-lived streams (health Watch, reflection) within a bound of their own, apart from model calls.

Each open stream holds one of grpc's maximum_concurrent_rpcs slots for as long as its client
keeps it, and never passes the CallGate: unbounded, one connection holding thousands would
leave no slot for a model call and grow the process without limit (docs/serving.md, Overload).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from service.metrics import Metrics

CLOSING = (grpc.StatusCode.UNAVAILABLE,
           "the server is shutting down; reconnect and the channel picks another replica")
"""How a stream ends, or is refused, once the server has sent GOAWAY."""


class StreamLimit:
    """At most `limit` streams open on one port: more are refused with RESOURCE_EXHAUSTED,
    counted in vae_requests_total{method}; those open are vae_streams_open{port}."""

    def __init__(self, metrics: Metrics, port: str, limit: int) -> None:
        self.limit = limit
        self.port = port
        self._open: set[asyncio.Task[None]] = set()
        self._closed = False
        self._gauge = metrics.streams_open.labels(port)
        self._requests = metrics.requests

    def _refusal(self) -> tuple[grpc.StatusCode, str] | None:
        if self._closed:
            return CLOSING
        if len(self._open) >= self.limit:
            return (grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{len(self._open)} health Watch and reflection streams are open on this "
                    f"port ({self.port}), the most --max-streams allows; close one, or poll "
                    "with health Check")
        return None

    async def hold(self, method: str, context: grpc.aio.ServicerContext,
                   stream: Coroutine[Any, Any, None]) -> None:
        """Run one stream's handler while it counts as open, or refuse it at once."""
        refused = self._refusal()
        if refused is not None:
            stream.close()
            self._requests.labels(method, refused[0].name).inc()
            await context.abort(*refused)
        task = asyncio.ensure_future(stream)
        self._open.add(task)
        self._gauge.inc()
        try:
            await task
            return
        except asyncio.CancelledError:
            if not (self._closed and task.cancelled()):
                raise  # the client went away, or grpc cancelled the call
        finally:  # before the status goes out: the server's stop may end with it
            self._open.discard(task)
            self._gauge.dec()
        await context.abort(*CLOSING)

    def close(self) -> None:
        """End every open stream with UNAVAILABLE and refuse new ones: after GOAWAY its client
        opens it again on another connection, and the server's stop need not wait for it."""
        self._closed = True
        for task in self._open:
            task.cancel()


class BoundedHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """The shared HealthServicer's answers on one port, its Watch streams within that port's
    StreamLimit (Check is over at once and needs no bound; List stays UNIMPLEMENTED)."""

    def __init__(self, health: HealthServicer, streams: StreamLimit) -> None:
        self._health = health
        self.streams = streams

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        response: health_pb2.HealthCheckResponse = await self._health.Check(request, context)
        return response

    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> None:
        await self.streams.hold("Watch", context, self._health.Watch(request, context))
