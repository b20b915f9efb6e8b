"""The one place errors become gRPC status codes, and every RPC of every front is counted.

Front-agnostic: a servicer of any front decorates its methods with `rpc(method, items)` and
holds a `RequestMetrics` as `self.request_metrics`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from service.errors import (
    DeadlineExpired,
    FailedPrecondition,
    InvalidInput,
    ModelUnavailable,
    NotFound,
    QueueFull,
)
from service.metrics import Metrics

logger = logging.getLogger(__name__)
STATUS_OF = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelUnavailable: grpc.StatusCode.UNAVAILABLE,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}
"""Exception class -> gRPC status; anything else is INTERNAL and logged with its traceback."""


@dataclass(frozen=True)
class Unparseable:
    """A request body that is not the method's message; the rpc decorator answers it."""

    type_name: str
    reason: str


def _tolerant_parser(message_class: type[Message]) -> Callable[[bytes], Message | Unparseable]:
    """grpc's own parse failure is an ERROR with a traceback and UNKNOWN for the client."""
    def parse(data: bytes) -> Message | Unparseable:
        try:
            return message_class.FromString(data)
        except DecodeError as err:
            return Unparseable(message_class.DESCRIPTOR.full_name, str(err).split(": ")[-1])
    return parse


def add_service(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor) -> None:
    """Register every method of `service` on `servicer`, parsing bodies with _tolerant_parser."""
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        make = (grpc.stream_stream_rpc_method_handler
                if method.client_streaming or method.server_streaming
                else grpc.unary_unary_rpc_method_handler)
        handlers[method.name] = make(getattr(servicer, method.name),
                                     request_deserializer=_tolerant_parser(request_class),
                                     response_serializer=response_class.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name,
                                                                          handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


class RequestMetrics:
    """Metric children of one front's methods, resolved once: labels() takes a lock per call."""

    def __init__(self, metrics: Metrics, methods: Iterable[str]) -> None:
        self.inflight = metrics.inflight
        self.requests = metrics.requests
        self.items_of = {m: metrics.items.labels(m) for m in methods}
        self.seconds_of = {m: metrics.request_seconds.labels(m) for m in methods}


class Servicer(Protocol):
    request_metrics: RequestMetrics


Response = TypeVar("Response")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]


def status_for(err: Exception) -> tuple[grpc.StatusCode, str]:
    for kind, code in STATUS_OF.items():
        if isinstance(err, kind):
            return code, str(err)
    logger.exception("internal error", exc_info=err)
    return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"


def rpc(method: str, items: Callable[[Any], int]) -> Callable[[Handler[Response]], Handler[Response]]:
    """Count, time and map errors of one RPC; `items` counts what the response carries."""

    def decorate(handler: Handler[Response]) -> Handler[Response]:
        @functools.wraps(handler)
        async def wrapper(self: Servicer, request: Any, context: grpc.aio.ServicerContext
                          ) -> Response:
            metrics = self.request_metrics
            metrics.inflight.inc()
            started = time.monotonic()
            code, message = grpc.StatusCode.CANCELLED, "cancelled by the client"
            try:
                if isinstance(request, Unparseable):
                    raise InvalidInput(f"the request body is not a valid {request.type_name} "
                                       f"({request.reason}); send the message the method takes")
                response = await handler(self, request, context)
                metrics.items_of[method].inc(items(response))
                code = grpc.StatusCode.OK
                return response
            except Exception as err:
                code, message = status_for(err)
            finally:
                if code == grpc.StatusCode.CANCELLED and _deadline_passed(context):
                    code = grpc.StatusCode.DEADLINE_EXCEEDED  # grpc cancelled it at the deadline
                metrics.inflight.dec()
                metrics.seconds_of[method].observe(time.monotonic() - started)
                metrics.requests.labels(method, code.name).inc()
            await context.abort(code, message)
            raise AssertionError("abort returns only by raising")

        return wrapper

    return decorate


UNLIMITED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
"""Probes and tooling are never refused: a probe failing under load would restart a busy pod."""
QUIET_S = 0.1
"""Drain: no new call for this long means grpc holds no call we have not yet seen."""


class Admission(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses, counted in vae_requests_total, the unary calls the server cannot take: beyond
    max_calls in flight RESOURCE_EXHAUSTED, and every new one UNAVAILABLE while draining.

    An interceptor, not grpc's maximum_concurrent_rpcs: grpc refuses those in core
    ('Concurrent RPC limit exceeded!') after the interceptors ran and without calling the
    handler, so nothing of ours could count them.
    """

    def __init__(self, metrics: Metrics, max_calls: int) -> None:
        self.max_calls = max_calls
        self.calls = 0
        self.draining = False
        self.last_arrival_s = time.monotonic()
        self._requests = metrics.requests
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        self.last_arrival_s = time.monotonic()
        handler = await continuation(details)
        path: str = details.method
        if handler is None or handler.unary_unary is None or path.startswith(UNLIMITED_PREFIXES):
            return handler
        wrapped = self._wrapped.get(path)
        if wrapped is None:
            wrapped = self._wrapped[path] = self._admit(handler, path.rpartition("/")[2])
        return wrapped

    def _admit(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary

        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.draining:
                await self._refuse(context, method, grpc.StatusCode.UNAVAILABLE,
                                   "the server is draining (SIGTERM); retry on another replica")
            if self.calls >= self.max_calls:
                await self._refuse(context, method, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"server busy: {self.calls} calls in flight, the most its queues "
                                   "can hold (see max_queue_rows); retry with backoff")
            self.calls += 1
            try:
                return await inner(request, context)
            finally:
                self.calls -= 1

        return grpc.unary_unary_rpc_method_handler(
            admitted, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    async def _refuse(self, context: grpc.aio.ServicerContext, method: str,
                      code: grpc.StatusCode, message: str) -> None:
        self._requests.labels(method, code.name).inc()
        await context.abort(code, message)

    async def drain(self, timeout_s: float) -> None:
        """Refuse new calls with UNAVAILABLE until those admitted are done and grpc has handed
        over every call it queued (no arrival for QUIET_S), or timeout_s passed.

        Only then may grpc's stop run: it cancels, with a bare CANCELLED, the calls it still
        queues and those still running.
        """
        self.draining = True
        give_up_s = time.monotonic() + timeout_s
        while time.monotonic() < give_up_s:
            if self.calls == 0 and time.monotonic() - self.last_arrival_s >= QUIET_S:
                return
            await asyncio.sleep(0.02)


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def deadline_s(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline on the time.monotonic() clock, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
