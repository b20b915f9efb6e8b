"""The one place errors become gRPC status codes, and every RPC of every front is counted.

Front-agnostic: a servicer of any front decorates its methods with `rpc(method, items)` and
holds a `RequestMetrics` as `self.request_metrics`.
"""

from __future__ import annotations

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
                metrics.inflight.dec()
                metrics.seconds_of[method].observe(time.monotonic() - started)
                metrics.requests.labels(method, code.name).inc()
            await context.abort(code, message)
            raise AssertionError("abort returns only by raising")

        return wrapper

    return decorate


def deadline_s(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline on the time.monotonic() clock, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
