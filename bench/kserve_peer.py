"""KServe's Python ModelServer (PyPI `kserve`) serving one version's encoder and decoder: a peer.

.venv-kserve/bin/python bench/kserve_peer.py --version-dir models/mnist/1 --name mnist --port P

Runs in its own throwaway venv, never in ours: `bash bench/kserve_venv.sh` makes .venv-kserve
(kserve and onnxruntime only). It serves MODEL.decoder and MODEL.encoder over the KServe v2
gRPC protocol, each a plain `kserve.Model` around one ONNX Runtime InferenceSession (default
threads, no batching), so bench/load.py --protocol v2 drives it exactly as it drives our v2
front. The gRPC server is assembled from KServe's own servicer, data plane and interceptors,
as its ModelServer assembles it; the one difference is the address: 127.0.0.1 instead of
[::], and no REST server.
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent import futures
from pathlib import Path
from typing import Any

import onnxruntime as ort
from grpc import aio
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

GRAPHS = {"decoder": "decoder.onnx", "encoder": "encoder.onnx"}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
KSERVE_DEFAULT_THREADS = 4
"""ModelServer's default max_threads for its gRPC executor."""


class OnnxGraph(Model):  # type: ignore[misc]
    """One ONNX graph: every input row goes through InferenceSession.run as it arrives."""

    def __init__(self, name: str, path: Path, threads: int) -> None:
        super().__init__(name)
        self.path, self.threads = path, threads

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return True

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": self.input.name, "datatype": "FP32",
                 "shape": [-1, *self.input.shape[1:]]}]

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None
                      ) -> InferResponse:
        batch = payload.inputs[0].as_numpy()
        values = self.session.run(self.output_names, {self.input.name: batch})
        outputs = [InferOutput(name=name, shape=list(v.shape), datatype="FP32", data=v)
                   for name, v in zip(self.output_names, values, strict=True)]
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs)


async def serve(version_dir: Path, name: str, port: int, threads: int) -> None:
    repository = ModelRepository()
    for graph, file in GRAPHS.items():
        model = OnnxGraph(f"{name}.{graph}", version_dir / file, threads)
        model.load()
        repository.update(model)
    servicer = InferenceServicer(DataPlane(repository), ModelRepositoryExtension(repository))
    server = aio.server(futures.ThreadPoolExecutor(max_workers=KSERVE_DEFAULT_THREADS),
                        interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
                        options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                 ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser(prog="bench/kserve_peer.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version-dir", type=Path, required=True,
                   help="a version folder of the model repository (decoder.onnx, encoder.onnx)")
    p.add_argument("--name", required=True, help="models are served as NAME.decoder, NAME.encoder")
    p.add_argument("--port", type=int, required=True, help="gRPC port on 127.0.0.1")
    p.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime intra-op threads per graph; 0 = its default (one per "
                        "physical core, each pinned to its core, whatever taskset allows)")
    args = p.parse_args()
    asyncio.run(serve(args.version_dir, args.name, args.port, args.threads))


if __name__ == "__main__":
    main()
