"""vae.v1.VaeService: one short method per RPC, and the one place errors become status codes."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from service.config import ServerConfig
from service.errors import DeadlineExpired, InvalidInput, ModelUnavailable, QueueFull
from service.metrics import Metrics
from service.model import VaeModel
from service.tensors import check_sample, from_tensor, to_tensor
from service.vae.v1 import vae_pb2, vae_pb2_grpc

logger = logging.getLogger(__name__)
STATUS_OF = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelUnavailable: grpc.StatusCode.UNAVAILABLE,
}
"""Exception class -> gRPC status; anything else is INTERNAL and logged with its traceback."""

Response = TypeVar("Response")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]


def _status_for(err: Exception) -> tuple[grpc.StatusCode, str]:
    for kind, code in STATUS_OF.items():
        if isinstance(err, kind):
            return code, str(err)
    logger.exception("internal error", exc_info=err)
    return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"


def rpc(method: str, items: Callable[[Any], int]) -> Callable[[Handler[Response]], Handler[Response]]:
    """Count, time and map errors of one RPC; `items` counts what the response carries."""

    def decorate(handler: Handler[Response]) -> Handler[Response]:
        @functools.wraps(handler)
        async def wrapper(self: VaeServicer, request: Any, context: grpc.aio.ServicerContext
                          ) -> Response:
            metrics = self.metrics
            metrics.inflight.inc()
            started = time.monotonic()
            code, message = grpc.StatusCode.CANCELLED, "cancelled by the client"
            try:
                response = await handler(self, request, context)
                self.items_of[method].inc(items(response))
                code = grpc.StatusCode.OK
                return response
            except Exception as err:
                code, message = _status_for(err)
            finally:
                metrics.inflight.dec()
                self.seconds_of[method].observe(time.monotonic() - started)
                metrics.requests.labels(method, code.name).inc()
            await context.abort(code, message)
            raise AssertionError("abort returns only by raising")

        return wrapper

    return decorate


def _deadline_s(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    """Decode the request, call the model, encode the response."""

    def __init__(self, model: VaeModel, metrics: Metrics, config: ServerConfig) -> None:
        self.model = model
        self.metrics = metrics
        self.config = config
        self.image_shape = model.manifest.image_shape
        self.latent_shape = (model.manifest.latent_dim,)
        methods = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].methods_by_name
        # Label children resolved once: a labels() lookup takes a lock on every request.
        self.items_of = {m: metrics.items.labels(m) for m in methods}
        self.seconds_of = {m: metrics.request_seconds.labels(m) for m in methods}

    @rpc("Encode", items=lambda r: r.mean.shape[0])
    async def Encode(self, request: vae_pb2.EncodeRequest, context: grpc.aio.ServicerContext
                     ) -> vae_pb2.EncodeResponse:
        images = from_tensor(request.images, "images", self.image_shape, unit_range=True)
        mean, log_var = await self.model.encode(images, _deadline_s(context))
        return vae_pb2.EncodeResponse(mean=to_tensor(mean), log_var=to_tensor(log_var))

    @rpc("Decode", items=lambda r: r.images.shape[0])
    async def Decode(self, request: vae_pb2.DecodeRequest, context: grpc.aio.ServicerContext
                     ) -> vae_pb2.DecodeResponse:
        latents = from_tensor(request.latents, "latents", self.latent_shape, unit_range=False)
        images = await self.model.decode(latents, _deadline_s(context))
        return vae_pb2.DecodeResponse(images=to_tensor(images))

    @rpc("Sample", items=lambda r: r.images.shape[0])
    async def Sample(self, request: vae_pb2.SampleRequest, context: grpc.aio.ServicerContext
                     ) -> vae_pb2.SampleResponse:
        temperature = check_sample(request.count, request.temperature,
                                   self.config.max_sample_count)
        out = await self.model.sample(request.count, request.seed, temperature,
                                      _deadline_s(context))
        return vae_pb2.SampleResponse(images=to_tensor(out.images), latents=to_tensor(out.latents),
                                      seed=out.seed)

    @rpc("Denoise", items=lambda r: r.images.shape[0])
    async def Denoise(self, request: vae_pb2.DenoiseRequest, context: grpc.aio.ServicerContext
                      ) -> vae_pb2.DenoiseResponse:
        images = from_tensor(request.images, "images", self.image_shape, unit_range=True)
        return vae_pb2.DenoiseResponse(images=to_tensor(
            await self.model.denoise(images, _deadline_s(context))))

    @rpc("GetModelInfo", items=lambda r: 0)
    async def GetModelInfo(self, request: vae_pb2.GetModelInfoRequest,
                           context: grpc.aio.ServicerContext) -> vae_pb2.ModelInfo:
        m, c = self.model.manifest, self.config
        batching = vae_pb2.BatchingInfo(max_batch_size=c.max_batch_size,
                                        max_queue_delay_us=c.max_queue_delay_us,
                                        max_queue_rows=c.max_queue_rows, instances=c.instances)
        return vae_pb2.ModelInfo(
            name=m.model_name, image_shape=m.image_shape, latent_dim=m.latent_dim,
            version=m.version, execution_provider=self.model.provider, batching=batching,
            max_sample_count=c.max_sample_count, arch=m.arch,
            dataset=str(m.training.get("dataset", "")))
