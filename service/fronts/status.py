"""The one place errors become gRPC status codes, and every RPC of every front is counted.

Front-agnostic: a servicer of any front decorates its methods with `rpc(method, items)` and
holds the server's `CallGate` as `self.gate`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from service.context import NO_NAMES, RequestContext
from service.errors import (
    DeadlineExpired,
    FailedPrecondition,
    InvalidInput,
    MessageTooLarge,
    ModelUnavailable,
    NotFound,
    QueueFull,
    Unauthenticated,
    Unimplemented,
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
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    MessageTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
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


class _NoMessage:
    """A unary call whose one message grpc refused before any handler: larger than
    max_receive_message_length (the client already has RESOURCE_EXHAUSTED from grpc)."""


NO_MESSAGE = _NoMessage()


def _one_message(handler: Callable[[Any, grpc.aio.ServicerContext], Awaitable[bytes]],
                 gate: CallGate
                 ) -> Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], Awaitable[bytes]]:
    """A unary method served as client-streaming: grpc's unary path ends a call whose message
    it refused as too large before any code of ours runs, uncounted; read here, that call comes
    as NO_MESSAGE and is counted. Server CPU per call is grpc's unary handler's, within noise
    (docs/benchmarks.md, "Unary methods served as client-streaming")."""
    async def receive(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> bytes:
        gate.arrived += 1
        try:
            request = await context.read()
            return await handler(NO_MESSAGE if request is grpc.aio.EOF else request, context)
        finally:
            gate.arrived -= 1
    return receive


def _serialized(data: bytes) -> bytes:
    """The rpc decorator has serialized the answer already, to check its size and count it."""
    return data


def add_service(server: grpc.aio.Server, servicer: Servicer, service: ServiceDescriptor) -> None:
    """Register every method of `service` on `servicer`, parsing bodies with _tolerant_parser."""
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        parse = _tolerant_parser(request_class)
        if method.client_streaming or method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                getattr(servicer, method.name), request_deserializer=parse,
                response_serializer=_serialized)
        else:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                _one_message(getattr(servicer, method.name), servicer.gate),
                request_deserializer=parse,
                response_serializer=_serialized)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name,
                                                                          handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


class CallGate:
    """Every call of every front passes here: admitted or refused, timed and counted.

    Refuses, counted in vae_requests_total, the calls the server cannot take: beyond
    max_calls in flight RESOURCE_EXHAUSTED. Health and reflection never pass here, so they
    are never refused for load: a probe failing under load would restart a busy pod (their
    long-lived streams have a bound of their own, service/transport/streams.py). A stopping server
    refuses nothing here either: GOAWAY sends new calls elsewhere (RunningServer.stop).

    Part of the handler, not a grpc interceptor: an interceptor costs every call one more
    coroutine and handler wrapper (about 10 % of requests/s, docs/benchmarks.md). Not grpc's
    maximum_concurrent_rpcs either: grpc refuses those in core ('Concurrent RPC limit
    exceeded!') without calling the handler, so nothing of ours could count them.
    """

    def __init__(self, metrics: Metrics, max_calls: int, max_message_bytes: int) -> None:
        self.max_calls = max_calls
        self.max_message_bytes = max_message_bytes
        """grpc's max_send_message_length: a larger answer is refused here, counted."""
        self.calls = 0
        self.arrived = 0
        """Calls whose handler has started, admitted or still reading their message: the
        company a request may be batched with."""
        self.inflight = metrics.inflight
        self._metrics = metrics
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """A metric's child for these labels, resolved once: labels() locks on every call."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def items(self, method: str) -> Any:
        """vae_items_total{method}."""
        return self._child(self._metrics.items, method)

    def seconds(self, method: str) -> Any:
        """vae_request_duration_seconds{method}."""
        return self._child(self._metrics.request_seconds, method)

    def finished(self, method: str, code: grpc.StatusCode) -> Any:
        """vae_requests_total{method, code}."""
        return self._child(self._metrics.requests, method, code.name)

    def refusal(self) -> tuple[grpc.StatusCode, str] | None:
        """Why a call arriving now is refused, or None when it is admitted."""
        if self.calls >= self.max_calls:
            return (grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server busy: {self.calls} calls in flight, the most its queues can hold "
                    "(see max_queue_rows); retry with backoff")
        return None


class Servicer(Protocol):
    gate: CallGate


Response = TypeVar("Response", bound=Message)
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]
Wrapped = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[bytes]]


@dataclass(frozen=True)
class Counted:
    """An answer and the items it stands for, where the answer alone does not show them
    (a v2 vae.sample asked only for its seed still made `count` images)."""

    message: Message
    items: int


def status_for(err: Exception) -> tuple[grpc.StatusCode, str]:
    for kind, code in STATUS_OF.items():
        if isinstance(err, kind):
            return code, str(err)
    logger.exception("internal error", exc_info=err)
    return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"


def rpc(method: str, items: Callable[[Response], int] | None) -> Callable[[Handler], Wrapped]:
    """Admit, count, time and map errors of one RPC; `items` counts what the response carries
    (None: the handler returns a Counted). The answer is serialized here: one larger than
    grpc's max_send_message_length is refused and counted as the client sees it."""

    def decorate(handler: Handler) -> Wrapped:
        @functools.wraps(handler)
        async def wrapper(self: Servicer, request: Any, context: grpc.aio.ServicerContext
                          ) -> bytes:
            gate = self.gate
            started = time.monotonic()
            refused = gate.refusal()
            if refused is not None:
                gate.finished(method, refused[0]).inc()
                await context.abort(*refused)
            gate.calls += 1
            gate.inflight.inc()
            code, message = grpc.StatusCode.CANCELLED, "cancelled by the client"
            try:
                if request is NO_MESSAGE:
                    raise MessageTooLarge(
                        f"the request is larger than this server's message limit of "
                        f"{gate.max_message_bytes} bytes (max_message_bytes); send fewer rows "
                        "per call")
                if isinstance(request, Unparseable):
                    raise InvalidInput(f"the request body is not a valid {request.type_name} "
                                       f"({request.reason}); send the message the method takes")
                response = await handler(self, request, context)
                if items is None:
                    response, count = response.message, response.items
                else:
                    count = items(response)
                data: bytes = response.SerializeToString()
                if len(data) > gate.max_message_bytes:
                    raise MessageTooLarge(
                        f"the answer would be {len(data)} bytes, over this server's message "
                        f"limit of {gate.max_message_bytes} (max_message_bytes); ask for fewer "
                        "items, outputs or a shorter id per call")
                gate.items(method).inc(count)
                code = grpc.StatusCode.OK
                return data
            except Exception as err:
                code, message = status_for(err)
            finally:
                if code == grpc.StatusCode.CANCELLED and _deadline_passed(context):
                    code = grpc.StatusCode.DEADLINE_EXCEEDED  # grpc cancelled it at the deadline
                gate.calls -= 1
                gate.inflight.dec()
                gate.seconds(method).observe(time.monotonic() - started)
                gate.finished(method, code).inc()
            await context.abort(code, message)
            raise AssertionError("abort returns only by raising")

        return wrapper

    return decorate


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def request_context(context: grpc.aio.ServicerContext, gate: CallGate,
                    names: Mapping[str, str] = NO_NAMES, version: int = 0,
                    request_id: str = "") -> RequestContext:
    """What travels with a call to the batcher: its deadline, the calls it may be batched
    with, and its metadata, read for a trace id only if a batch fails."""
    return RequestContext(deadline_s(context), version, names, gate.arrived - 1,
                          context.invocation_metadata, request_id)


def deadline_s(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline on the time.monotonic() clock, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
