"""inference.GRPCInferenceService (KServe v2 / Open Inference Protocol): a thin adapter.

v2 requests in, the same data plane and batchers as vae.v1, v2 responses out. Models and
wire decoding are in service/fronts/v2_wire.py; errors and metrics in service/fronts/status.py.
"""

from __future__ import annotations

import hmac
import logging
from importlib import metadata
from typing import Any, TypeAlias

import grpc

from service.errors import FailedPrecondition, NotFound, Unauthenticated, Unimplemented
from service.fronts.status import CallGate, Counted, request_context, rpc
from service.fronts.v2_wire import (
    V2Model,
    decode_inputs,
    find_model,
    parse_version,
    requested_version,
    select_outputs,
    v2_models,
)
from service.inference import grpc_service_pb2 as pb
from service.inference import grpc_service_pb2_grpc as pb_grpc
from service.inference import model_config_pb2 as mc
from service.plane.dataplane import DataPlane
from service.plane.repository import Manifest, published_versions
from service.plane.watcher import VersionWatcher

logger = logging.getLogger(__name__)
SERVER_NAME = "vae-serve"
EXTENSIONS = ("model_repository", "model_configuration", "schedule_policy")
"""What this server implements beyond the core protocol (as ServerMetadata lists it)."""
METHODS = tuple(pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name)
Context: TypeAlias = grpc.aio.ServicerContext
CONFIG_TYPE = {"FP32": mc.TYPE_FP32, "INT64": mc.TYPE_INT64, "UINT64": mc.TYPE_UINT64,
               "BOOL": mc.TYPE_BOOL}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """One method per RPC; the RPCs not implemented here answer UNIMPLEMENTED through `rpc` (counted)."""

    def __init__(self, plane: DataPlane, watcher: VersionWatcher, gate: CallGate) -> None:
        self.plane = plane
        self.watcher = watcher
        self.gate = gate
        self._models_of: Manifest | None = None
        self._models: dict[str, V2Model] = {}

    @property
    def models(self) -> dict[str, V2Model]:
        """The v2 models of the current version, built once per version (not per request)."""
        manifest = self.plane.current.manifest
        if self._models_of is not manifest:
            self._models_of, self._models = manifest, v2_models(manifest, self.plane.operations)
        return self._models

    @rpc("ServerLive", items=lambda r: 0)
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @rpc("ServerReady", items=lambda r: 0)
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context
                          ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    @rpc("ModelReady", items=lambda r: 0)
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context
                         ) -> pb.ModelReadyResponse:
        model = find_model(self.models, request.name)
        version, current = parse_version(request.version), self.plane.current
        return pb.ModelReadyResponse(ready=version in (0, current.number) and
                                     current.graphs.issuperset(model.operation.graphs))

    @rpc("ServerMetadata", items=lambda r: 0)
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context
                             ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=metadata.version("vae-serve"),
                                         extensions=EXTENSIONS)

    @rpc("ModelMetadata", items=lambda r: 0)
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context
                            ) -> pb.ModelMetadataResponse:
        model = self._loaded_model(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name, versions=[str(self.plane.current.number)], platform=SERVER_NAME,
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in model.inputs],
            outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in model.outputs])

    @rpc("ModelConfig", items=lambda r: 0)
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context
                          ) -> pb.ModelConfigResponse:
        model = self._loaded_model(request.name, request.version)
        c = self.plane.config
        batched = model.operation.batched
        skip = 1 if batched else 0  # with batching, dims leave out the batch axis
        config = mc.ModelConfig(
            name=model.name, platform=SERVER_NAME, backend=SERVER_NAME,
            max_batch_size=c.max_batch_size if batched else 0,
            input=[mc.ModelInput(name=s.name, data_type=CONFIG_TYPE[s.datatype], dims=s.shape[skip:],
                                 optional=s.optional) for s in model.inputs],
            output=[mc.ModelOutput(name=s.name, data_type=CONFIG_TYPE[s.datatype],
                                   dims=s.shape[skip:]) for s in model.outputs],
            instance_group=[mc.ModelInstanceGroup(count=self.plane.current.instances)],
            model_transaction_policy=mc.ModelTransactionPolicy(decoupled=False))
        if batched:
            config.dynamic_batching.max_queue_delay_microseconds = c.max_queue_delay_us
        return pb.ModelConfigResponse(config=config)

    @rpc("ModelInfer", items=None)
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> Counted:
        model = find_model(self.models, request.model_name)
        want = parse_version(request.model_version)
        outputs = select_outputs(model, request.outputs)
        arrays = decode_inputs(model, request.inputs, request.raw_input_contents)
        answer = await self.plane.run(model.operation, arrays, request_context(
            context, self.gate, version=want, request_id=request.id))
        response = pb.ModelInferResponse(model_name=model.name, model_version=str(answer.version),
                                         id=request.id)
        for spec in outputs:
            value = answer.outputs[spec.name]
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        return Counted(response, len(answer.outputs[model.outputs[0].name]))

    @rpc("RepositoryIndex", items=lambda r: 0)
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context
                              ) -> pb.RepositoryIndexResponse:
        c, current = self.plane.config, self.plane.current.number
        on_disk = published_versions(c.model_repo, c.model_name)
        index = pb.RepositoryIndexResponse()
        for name in self.models:
            for version in sorted({*on_disk, current}):
                ready = version == current
                if request.ready and not ready:
                    continue
                reason = "" if ready else (self.watcher.refusal(version) or
                                           f"not loaded; version {current} serves")
                index.models.add(name=name, version=str(version),
                                 state="READY" if ready else "UNAVAILABLE", reason=reason)
        return index

    @rpc("RepositoryModelLoad", items=lambda r: 0)
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: Context
                                  ) -> pb.RepositoryModelLoadResponse:
        self._check_control("RepositoryModelLoad", context)
        self._check_repository_name(request.model_name)
        version = requested_version(request.parameters)
        await self.watcher.load(version)
        logger.info("RepositoryModelLoad from %s: %s, serving %s", context.peer(),
                    f"pinned version {version}" if version else "pin removed",
                    self.plane.current.label)
        return pb.RepositoryModelLoadResponse()

    @rpc("RepositoryModelUnload", items=lambda r: 0)
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: Context) -> pb.RepositoryModelUnloadResponse:
        self._check_control("RepositoryModelUnload", context)
        self._check_repository_name(request.model_name)
        raise FailedPrecondition(
            f"{request.model_name} is the only model this server serves; unloading it would leave "
            "nothing to serve. Load another version instead (RepositoryModelLoad with parameter "
            "'version'), or stop the server")

    def _check_control(self, method: str, context: Context) -> None:
        """Only the operator changes what is served: off unless turned on, then only for
        callers sending the configured header (compared in constant time)."""
        config = self.plane.config
        credential = config.repository_control_header
        if not config.repository_control or credential is None:
            raise FailedPrecondition(
                f"{method}: repository control is off on this server: the repository and "
                "--model-version decide what is served. The operator turns it on with "
                "--repository-control on (VAE_SERVE_REPOSITORY_CONTROL) and a credential "
                "header (--repository-control-header)")
        expected = credential.value.encode()
        sent = [value for key, value in context.invocation_metadata() or () if key == credential.key]
        if not any(isinstance(value, str) and hmac.compare_digest(value.encode(), expected)
                   for value in sent):
            raise Unauthenticated(
                f"{method} changes what this server serves: send the metadata header "
                f"{credential.key!r} with the value its operator configured (tritonclient: "
                f"headers={{{credential.key!r}: ...}}, grpcurl: -H '{credential.key}: ...')")

    def _check_repository_name(self, name: str) -> None:
        """Load and unload take the repository model (vae) or any of its v2 model names."""
        if name != self.plane.config.model_name:
            find_model(self.models, name)

    def _loaded_model(self, name: str, version_text: str) -> V2Model:
        """The v2 model `name` of the loaded version; another version is NOT_FOUND."""
        model = find_model(self.models, name)
        version = parse_version(version_text)
        if version and version != self.plane.current.number:
            raise NotFound(f"version {version} is not loaded; version "
                           f"{self.plane.current.number} is")
        return model


def _unimplemented(method: str) -> Any:
    @rpc(method, items=lambda r: 0)
    async def answer(self: InferenceServicer, request: Any, context: Context) -> None:
        raise Unimplemented(f"vae-serve does not implement {method}; it implements "
                            f"{', '.join(IMPLEMENTED)}")

    return answer


IMPLEMENTED = tuple(m for m in METHODS if m in vars(InferenceServicer))
for _method in METHODS:
    if _method not in IMPLEMENTED:
        setattr(InferenceServicer, _method, _unimplemented(_method))
