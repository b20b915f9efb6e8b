"""vae.v1.VaeService: a thin adapter per RPC: protobuf in, a declared operation run by the
data plane, protobuf out."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeAlias

import grpc

from service.context import NO_NAMES, RequestContext
from service.fronts.status import CallGate, request_context, rpc
from service.fronts.tensors import from_tensor, to_tensor
from service.operations.codec import DECODE, DENOISE, ENCODE, SAMPLE
from service.operations.interpolate import INTERPOLATE
from service.operations.likelihood import BOUNDS
from service.operations.score import SCORE
from service.plane.dataplane import DataPlane
from service.vae.v1 import vae_pb2, vae_pb2_grpc

Context: TypeAlias = grpc.aio.ServicerContext
IMAGES = MappingProxyType({"x": "images"})
"""vae.v1's names for the declared inputs, so errors say what this client sent."""
LATENTS = MappingProxyType({"z": "latents"})
ENDPOINTS = MappingProxyType({"x": "images", "z": "latents"})


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    """One method per RPC; validation, batching and versions live in the data plane."""

    def __init__(self, plane: DataPlane, gate: CallGate) -> None:
        self.plane = plane
        self.gate = gate

    def _context(self, context: Context, names: Mapping[str, str]) -> RequestContext:
        return request_context(context, self.gate, names)

    @rpc("Encode", items=lambda r: r.mean.shape[0])
    async def Encode(self, request: vae_pb2.EncodeRequest, context: Context) -> vae_pb2.EncodeResponse:
        out = await self.plane.run(ENCODE, {"x": from_tensor(request.images, "images")},
                                   self._context(context, IMAGES))
        return vae_pb2.EncodeResponse(mean=to_tensor(out.outputs["mean"]),
                                      log_var=to_tensor(out.outputs["log_var"]), version=out.version)

    @rpc("Decode", items=lambda r: r.images.shape[0])
    async def Decode(self, request: vae_pb2.DecodeRequest, context: Context) -> vae_pb2.DecodeResponse:
        out = await self.plane.run(DECODE, {"z": from_tensor(request.latents, "latents")},
                                   self._context(context, LATENTS))
        return vae_pb2.DecodeResponse(images=to_tensor(out.outputs["x_hat"]), version=out.version)

    @rpc("Sample", items=lambda r: r.images.shape[0])
    async def Sample(self, request: vae_pb2.SampleRequest, context: Context) -> vae_pb2.SampleResponse:
        inputs = {"count": request.count, "seed": request.seed, "temperature": request.temperature}
        out = await self.plane.run(SAMPLE, inputs, self._context(context, NO_NAMES))
        return vae_pb2.SampleResponse(images=to_tensor(out.outputs["x_hat"]),
                                      latents=to_tensor(out.outputs["z"]),
                                      seed=int(out.outputs["seed"][0]), version=out.version)

    @rpc("Denoise", items=lambda r: r.images.shape[0])
    async def Denoise(self, request: vae_pb2.DenoiseRequest, context: Context
                      ) -> vae_pb2.DenoiseResponse:
        out = await self.plane.run(DENOISE, {"x": from_tensor(request.images, "images")},
                                   self._context(context, IMAGES))
        return vae_pb2.DenoiseResponse(images=to_tensor(out.outputs["x_hat"]), version=out.version)

    @rpc("Score", items=lambda r: r.nll.shape[0])
    async def Score(self, request: vae_pb2.ScoreRequest, context: Context) -> vae_pb2.ScoreResponse:
        samples = request.samples or 1
        inputs = {"x": from_tensor(request.images, "images"), "samples": samples,
                  "seed": request.seed}
        out = await self.plane.run(SCORE, inputs, self._context(context, IMAGES))
        scores = {name: to_tensor(out.outputs[name]) for name in BOUNDS}
        return vae_pb2.ScoreResponse(**scores, samples=samples,
                                     seed=int(out.outputs["seed"][0]), version=out.version)

    @rpc("Interpolate", items=lambda r: r.images.shape[0])
    async def Interpolate(self, request: vae_pb2.InterpolateRequest, context: Context
                          ) -> vae_pb2.InterpolateResponse:
        ends = request.WhichOneof("endpoints")
        inputs = {"steps": request.steps,
                  "spherical": request.path == vae_pb2.INTERPOLATION_PATH_SPHERICAL,
                  **({"x": from_tensor(request.images, "images")} if ends == "images" else
                     {"z": from_tensor(request.latents, "latents")} if ends == "latents" else {})}
        out = await self.plane.run(INTERPOLATE, inputs, self._context(context, ENDPOINTS))
        return vae_pb2.InterpolateResponse(images=to_tensor(out.outputs["x_hat"]),
                                           latents=to_tensor(out.outputs["z"]), version=out.version)

    @rpc("GetModelInfo", items=lambda r: 0)
    async def GetModelInfo(self, request: vae_pb2.GetModelInfoRequest, context: Context
                           ) -> vae_pb2.ModelInfo:
        version, c = self.plane.current, self.plane.config
        m = version.manifest
        batching = vae_pb2.BatchingInfo(max_batch_size=c.max_batch_size,
                                        max_queue_delay_us=c.max_queue_delay_us,
                                        max_queue_rows=c.max_queue_rows,
                                        instances=version.instances)
        return vae_pb2.ModelInfo(
            name=m.model_name, image_shape=m.image_shape, latent_dim=m.latent_dim,
            version=m.version, execution_provider=version.provider, batching=batching,
            max_sample_count=c.max_sample_count, arch=m.arch,
            dataset=str(m.training.get("dataset", "")), max_score_samples=c.max_score_samples,
            operations=[op.name for op in self.plane.runnable(version)])
