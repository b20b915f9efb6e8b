"""vae.v1.VaeService: a thin adapter: protobuf in, the data plane, protobuf out."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from service.fronts.status import CallGate, deadline_s, rpc
from service.fronts.tensors import from_tensor, to_tensor
from service.plane.dataplane import DataPlane
from service.vae.v1 import vae_pb2, vae_pb2_grpc

Context: TypeAlias = grpc.aio.ServicerContext


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    """One method per RPC; validation, batching and versions live in the data plane."""

    def __init__(self, plane: DataPlane, gate: CallGate) -> None:
        self.plane = plane
        self.gate = gate

    @rpc("Encode", items=lambda r: r.mean.shape[0])
    async def Encode(self, request: vae_pb2.EncodeRequest, context: Context) -> vae_pb2.EncodeResponse:
        out = await self.plane.encode(from_tensor(request.images, "images"), deadline_s(context))
        return vae_pb2.EncodeResponse(mean=to_tensor(out.mean), log_var=to_tensor(out.log_var),
                                      version=out.version)

    @rpc("Decode", items=lambda r: r.images.shape[0])
    async def Decode(self, request: vae_pb2.DecodeRequest, context: Context) -> vae_pb2.DecodeResponse:
        out = await self.plane.decode(from_tensor(request.latents, "latents"), deadline_s(context))
        return vae_pb2.DecodeResponse(images=to_tensor(out.images), version=out.version)

    @rpc("Sample", items=lambda r: r.images.shape[0])
    async def Sample(self, request: vae_pb2.SampleRequest, context: Context) -> vae_pb2.SampleResponse:
        out = await self.plane.sample(request.count, request.seed, request.temperature,
                                      deadline_s(context))
        return vae_pb2.SampleResponse(images=to_tensor(out.images), latents=to_tensor(out.latents),
                                      seed=out.seed, version=out.version)

    @rpc("Denoise", items=lambda r: r.images.shape[0])
    async def Denoise(self, request: vae_pb2.DenoiseRequest, context: Context
                      ) -> vae_pb2.DenoiseResponse:
        out = await self.plane.denoise(from_tensor(request.images, "images"), deadline_s(context))
        return vae_pb2.DenoiseResponse(images=to_tensor(out.images), version=out.version)

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
            dataset=str(m.training.get("dataset", "")))
