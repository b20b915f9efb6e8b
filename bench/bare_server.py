"""A bare grpc.aio VaeService that returns one pre-built response: the requests/s ceiling.

No validation, no batching, no ONNX Runtime: what is left is grpc.aio and protobuf.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
import numpy as np

from service.fronts.tensors import to_tensor
from service.vae.v1 import vae_pb2, vae_pb2_grpc


class BareServicer(vae_pb2_grpc.VaeServiceServicer):
    def __init__(self, image_shape: tuple[int, ...], latent_dim: int, items: int) -> None:
        self.info = vae_pb2.ModelInfo(image_shape=image_shape, latent_dim=latent_dim)
        images = to_tensor(np.zeros((items, *image_shape), np.float32))
        latents = to_tensor(np.zeros((items, latent_dim), np.float32))
        self.decoded = vae_pb2.DecodeResponse(images=images)
        self.encoded = vae_pb2.EncodeResponse(mean=latents, log_var=latents)

    async def GetModelInfo(self, request: object, context: object) -> vae_pb2.ModelInfo:
        return self.info

    async def Decode(self, request: object, context: object) -> vae_pb2.DecodeResponse:
        return self.decoded

    async def Encode(self, request: object, context: object) -> vae_pb2.EncodeResponse:
        return self.encoded


async def serve(port: int, image_shape: tuple[int, ...], latent_dim: int, items: int) -> None:
    server = grpc.aio.server()
    vae_pb2_grpc.add_VaeServiceServicer_to_server(BareServicer(image_shape, latent_dim, items),
                                                  server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bare_server", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--image-shape", type=int, nargs=3, required=True)
    p.add_argument("--latent-dim", type=int, required=True)
    p.add_argument("--items", type=int, default=1, help="items in each pre-built response")
    args = p.parse_args()
    asyncio.run(serve(args.port, tuple(args.image_shape), args.latent_dim, args.items))


if __name__ == "__main__":
    main()
