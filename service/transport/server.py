"""Build and run the grpc.aio server: VaeService, health, reflection, metrics, TLS, graceful stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer
from prometheus_client import CollectorRegistry

from service.config import ServerConfig
from service.errors import first_line
from service.fronts.kserve_v2 import InferenceServicer
from service.fronts.status import CallGate, add_service
from service.fronts.vae_v1 import VaeServicer
from service.inference import grpc_service_pb2
from service.metrics import Metrics, TlsMetrics, serve_metrics
from service.operations.catalog import OPERATIONS
from service.operations.spec import Operation
from service.plane.dataplane import DataPlane
from service.plane.repository import (
    GraphError,
    IntegrityError,
    Manifest,
    ManifestError,
    published_versions,
    resolve_version,
)
from service.plane.version import LoadedGraphs, load_graphs
from service.plane.watcher import Fingerprint, VersionWatcher, fingerprint, starting_version
from service.transport.ports import listening_ports, require_free_ports
from service.transport.streams import BoundedHealth, StreamLimit
from service.transport.tls import server_credentials
from service.vae.v1 import vae_pb2

logger = logging.getLogger(__name__)
SERVICE_NAME = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name
V2_SERVICE_NAME = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class MethodAwareReflection(ReflectionServicer):  # type: ignore[misc]
    """Also resolves method symbols (vae.v1.VaeService.Sample), which ghz asks for; its streams
    count against the port's StreamLimit.

    grpcio's reflection only knows message and service symbols (grpc/grpc#34743,
    bojand/ghz#419); a method resolves to the file of its service.
    """

    def __init__(self, service_names: tuple[str, ...], streams: StreamLimit) -> None:
        super().__init__(service_names)
        self._streams = streams

    async def ServerReflectionInfo(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async def answer() -> None:
            async for response in super(MethodAwareReflection, self).ServerReflectionInfo(
                    request_iterator, context):
                await context.write(response)

        await self._streams.hold("ServerReflectionInfo", context, answer())

    def _file_containing_symbol(self, request, fully_qualified_name):  # type: ignore[no-untyped-def]
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if not response.HasField("error_response"):
            return response
        service_name, _, method = fully_qualified_name.rpartition(".")
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            return response
        if method not in service.methods_by_name:
            return response
        return super()._file_containing_symbol(request, service_name)


@dataclass
class RunningServer:
    """A started server and what it owns; `stop` ends it in that order."""

    server: grpc.aio.Server
    port: int
    metrics_port: int
    health: HealthServicer
    plane: DataPlane
    watcher: VersionWatcher
    watching: asyncio.Task[None]
    metrics: Metrics
    metrics_http: WSGIServer | None
    gate: CallGate
    streams: StreamLimit
    health_server: grpc.aio.Server | None = None
    health_port: int = -1
    """The plaintext health-only port beside a TLS --port; -1 when there is none."""

    async def stop(self, grace_s: float, delay_s: float = 0.0) -> None:
        """NOT_SERVING at once; serving on for delay_s while endpoints and clients move to other
        replicas; then GOAWAY, so new calls go elsewhere, and in-flight ones get grace_s.

        Calls are not refused during the delay: a client that has not moved yet would get an
        error for a call this replica can still answer (docs/serving.md, Stopping).
        """
        self.watching.cancel()
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(delay_s)
        stopping = asyncio.ensure_future(self.server.stop(grace_s))
        await asyncio.sleep(0)  # GOAWAY is out: a stream ended now reopens on a new connection
        self.streams.close()
        await stopping
        if self.health_server is not None:  # probes saw NOT_SERVING until now
            await self.health_server.stop(0)
        await self.plane.close()
        if self.metrics_http is not None:
            _close(self.metrics_http)


async def build_server(config: ServerConfig, registry: CollectorRegistry | None = None,
                       operations: tuple[Operation, ...] = OPERATIONS) -> RunningServer:
    """Load and warm the model, then start serving `operations`; health is SERVING when this
    returns."""
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    credentials = None
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        credentials = server_credentials(config.tls_cert_file, config.tls_key_file,
                                         config.tls_client_ca_file, TlsMetrics(registry))
    if config.workers == 1:  # with workers the parent checked, and the ports are shared
        require_free_ports(config.host, listening_ports(config))
    graphs, refused = await _first_version(config)
    plane = DataPlane(config, metrics, graphs, operations)
    metrics.model_loads.labels("refused").inc(len(refused))
    for number, (_, reason) in sorted(refused.items()):
        logger.warning("refused %s: %s; starting on %s", config.model_repo / config.model_name /
                       str(number), reason, plane.current.label)
    limit = config.max_message_bytes or message_limit_bytes(plane.current.manifest, config)
    max_calls = max_admitted_calls(config)
    options = [("grpc.max_receive_message_length", limit),
               ("grpc.max_send_message_length", limit),
               ("grpc.so_reuseport", int(config.workers != 1)),
               # Overload (docs/serving.md): grpc's backlog of calls not yet handed to us
               # sheds them with a bare, uncounted CANCELLED; it must hold every call we
               # would admit plus a burst the event loop has not reached yet.
               ("grpc.server.max_pending_requests", max_calls + BACKLOG_CALLS),
               ("grpc.server.max_pending_requests_hard_limit", max_calls + BACKLOG_CALLS)]
    gate = CallGate(metrics, max_calls, limit)
    metrics_http: WSGIServer | None = None
    server: grpc.aio.Server | None = None
    try:  # whatever started is stopped again when a later step fails: no thread, port or
        # unstopped grpc server (whose finaliser breaks at exit) outlives a failed start
        if config.metrics_port >= 0:
            metrics_http = serve_metrics(config.metrics_port, config.host, registry)
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=concurrent_rpcs(
            max_calls, config.max_streams))
        watcher = VersionWatcher(plane, config, metrics, refused)
        add_service(server, VaeServicer(plane, gate),
                    vae_pb2.DESCRIPTOR.services_by_name["VaeService"])
        add_service(server, InferenceServicer(plane, watcher, gate),
                    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"])
        health = HealthServicer()
        streams = StreamLimit(metrics, "grpc", config.max_streams)
        health_pb2_grpc.add_HealthServicer_to_server(BoundedHealth(health, streams), server)
        reflected = (SERVICE_NAME, V2_SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            MethodAwareReflection(reflected, streams), server)
        port = _bind(server, config.host, config.port, "--port", credentials)
        await server.start()
        health_server, health_port = None, -1
        if credentials is not None and config.health_port >= 0:
            health_server, health_port = await _serve_health_only(
                BoundedHealth(health, StreamLimit(metrics, "health", config.max_streams)), config,
                options)
    except BaseException:
        if server is not None:
            await server.stop(0)
        if metrics_http is not None:
            _close(metrics_http)
        await plane.close()
        raise
    metrics_port = -1 if metrics_http is None else int(metrics_http.server_port)
    for name in ("", SERVICE_NAME, V2_SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info("serving %s on %s:%d (metrics :%d) with %s", plane.current.label, config.host,
                port, metrics_port, plane.current.provider)
    if credentials is not None:
        logger.info("TLS on :%d (%s); plaintext health-only port: %s", port,
                    "mutual: client certificates required" if config.tls_client_ca_file
                    else "server certificate only", health_port if health_port >= 0 else "off")
    watching = asyncio.get_running_loop().create_task(watcher.run(), name="version-watcher")
    return RunningServer(server, port, metrics_port, health, plane, watcher, watching, metrics,
                         metrics_http, gate, streams, health_server, health_port)


BACKLOG_CALLS = 16384
"""Calls grpc may hold before our event loop takes them; each holds its metadata and at most
one HTTP/2 stream window (64 KiB) of its request, so at most about 1 GiB."""
CONTROL_CALLS = 256
"""Health Check calls (over at once, never refused) within grpc's backstop limit."""
MESSAGE_HEADROOM_BYTES = 64 * 1024
"""Room for protobuf framing, names and metadata around the tensor bytes."""


def message_limit_bytes(manifest: Manifest, config: ServerConfig) -> int:
    """The largest message an admissible call needs: a request of max_queue_rows rows (larger
    ones are refused anyway), or a Sample answer of max_sample_count images and latents."""
    image = math.prod(manifest.image_shape)
    largest_request = config.max_queue_rows * 4 * max(image, manifest.latent_dim)
    largest_sample = config.max_sample_count * 4 * (image + manifest.latent_dim)
    return max(largest_request, largest_sample) + MESSAGE_HEADROOM_BYTES


def _close(metrics_http: WSGIServer) -> None:
    """Stop /metrics: its thread ends, and its port is free again."""
    metrics_http.shutdown()
    metrics_http.server_close()


def concurrent_rpcs(max_calls: int, max_streams: int) -> int:
    """grpc's maximum_concurrent_rpcs, a backstop that refuses uncounted: room for every call
    and stream we admit plus as many being refused (each holds a slot until it has answered),
    and health Checks, so our own bounds always act first."""
    return 2 * (max_calls + max_streams) + CONTROL_CALLS


def max_admitted_calls(config: ServerConfig) -> int:
    """Calls the two graphs can hold at once (each holds a row, queued or running); the
    server refuses more with RESOURCE_EXHAUSTED before reading further (docs/serving.md, Overload).
    Sized before the provider is known, so with --instances auto for the CPU's count: never less."""
    running_rows = config.runner_instances(on_gpu=False) * config.max_batch_size
    return 2 * (config.max_queue_rows + running_rows)


async def _first_version(config: ServerConfig
                         ) -> tuple[LoadedGraphs, dict[int, tuple[Fingerprint, str]]]:
    """The pinned version (pin.json), else --model-version's choice, else the newest that loads:
    a bad one is refused, not a reason not to start. An explicit --model-version is exact (the
    operator asked for that one); with none good, the first one's error stops the start."""
    repo, name = config.model_repo, config.model_name
    versions = published_versions(repo, name)
    wanted = starting_version(config)
    if not versions or (wanted and wanted == config.model_version):
        folder = resolve_version(repo, name, wanted)
        return await asyncio.to_thread(load_graphs, folder, config), {}
    fallback = [config.model_version] if config.model_version else list(reversed(versions))
    refused: dict[int, tuple[Fingerprint, str]] = {}
    errors: list[Exception] = []
    for number in dict.fromkeys(v for v in (wanted, *fallback) if v):
        folder = repo / name / str(number)
        marks = fingerprint(folder)
        try:
            return await asyncio.to_thread(load_graphs, folder, config), refused
        except (ManifestError, IntegrityError, GraphError, OSError) as err:
            refused[number] = (marks, first_line(err))
            errors.append(err)
    raise errors[0]


async def _serve_health_only(health: BoundedHealth, config: ServerConfig,
                             options: list[tuple[str, int]]) -> tuple[grpc.aio.Server, int]:
    """A second, plaintext server with the same health state and nothing else: kubelet's gRPC
    probes speak neither TLS nor client certificates. Every other service is UNIMPLEMENTED.
    Anonymous, so bounded like the main port: its own Watch streams, no model calls."""
    server = grpc.aio.server(options=options,
                             maximum_concurrent_rpcs=concurrent_rpcs(0, config.max_streams))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    try:
        port = _bind(server, config.host, config.health_port, "--health-port", None)
        await server.start()
    except BaseException:
        await server.stop(0)
        raise
    return server, port


def _bind(server: grpc.aio.Server, host: str, port: int, flag: str,
          credentials: grpc.ServerCredentials | None) -> int:
    """The bound port; grpc's bind failure (a RuntimeError) as the one-line OSError of a busy port."""
    address = f"{host}:{port}"
    try:
        if credentials is None:
            return int(server.add_insecure_port(address))
        return int(server.add_secure_port(address, credentials))
    except RuntimeError as err:
        raise OSError(f"{flag} {port}: grpc cannot bind {address} ({first_line(err)}); stop the "
                      "other server or pick another port (0 = any free port)") from None


async def serve(config: ServerConfig, on_serving: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then stop: drain_delay_s, GOAWAY, up to grace_s;
    `on_serving` once serving."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before the port opens: a stop that comes
        loop.add_signal_handler(sig, stop.set)  # early still drains what was admitted
    running = await build_server(config)
    loop.add_signal_handler(signal.SIGHUP, running.watcher.rescan_soon)
    if on_serving is not None:
        on_serving()
    # What is loaded now (modules, sessions, descriptors: about 40,000 objects) lives until
    # exit; frozen, the collector stops re-scanning it, a 10 ms pause at every full pass.
    gc.freeze()
    await stop.wait()
    logger.info("stopping: NOT_SERVING, serving on for %.1f s, then GOAWAY and up to %.1f s "
                "for in-flight requests", config.drain_delay_s, config.grace_s)
    await running.stop(config.grace_s, config.drain_delay_s)
    logger.info("stopped")
