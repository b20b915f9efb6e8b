"""ServerConfig: the only place that holds a server default or reads a VAE_SERVE_* variable."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "VAE_SERVE_"
DEVICES = ("auto", "cuda", "cpu")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A setting out of range; the message names the flag, its variable and what is valid."""


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one server process. Each field is a flag --field-name and VAE_SERVE_FIELD_NAME."""

    model_repo: Path = Path("models")
    """Model repository folder written by vae-export."""
    model_name: str = "vae"
    """Model folder inside the repository."""
    model_version: int = 0
    """Version to serve; 0 = the newest published version."""
    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 inside a container."""
    port: int = 50051
    """gRPC port; 0 picks a free port (tests)."""
    metrics_port: int = 8002
    """Prometheus /metrics HTTP port; 0 picks a free port, -1 turns the endpoint off."""
    device: str = "auto"
    """auto: CUDA when a GPU and onnxruntime-gpu are there, else CPU; cuda: GPU or refuse to start."""
    max_batch_size: int = 64
    """Most rows per ONNX Runtime call; larger requests are split and reassembled."""
    max_queue_delay_us: int = 0
    """Longest a queued row waits for company before a partial batch runs; 0 = opportunistic."""
    max_queue_rows: int = 4096
    """Rows queued per graph before new requests get RESOURCE_EXHAUSTED."""
    instances: int = 1
    """Concurrent runners per graph (like Triton's instance count)."""
    intra_op_threads: int = 0
    """ONNX Runtime intra-op threads per session; 0 = ONNX Runtime's default (all cores)."""
    max_message_bytes: int = 64 * 1024 * 1024
    """Largest gRPC message received or sent, in bytes."""
    max_sample_count: int = 1024
    """Largest Sample.count accepted."""
    grace_s: float = 10.0
    """Seconds in-flight requests get to finish after SIGTERM before the server stops."""
    log_level: str = "INFO"
    """Logging level."""

    def __post_init__(self) -> None:
        positive = ("max_batch_size", "max_queue_rows", "instances", "max_message_bytes",
                    "max_sample_count")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("model_version", "max_queue_delay_us", "intra_op_threads", "grace_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535 or not -1 <= self.metrics_port <= 65535:
            raise ConfigError("--port and --metrics-port must be within 0..65535")
        if self.device not in DEVICES:
            raise ConfigError(f"{_flag('device')} must be one of {', '.join(DEVICES)}, got "
                              f"{self.device!r}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"{_flag('log_level')} must be one of {', '.join(LOG_LEVELS)}")

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> ServerConfig:
        """Parse flags whose defaults come from VAE_SERVE_* (environment), then from the class."""
        args = build_parser(os.environ if environ is None else environ).parse_args(argv)
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _flag(field_name: str) -> str:
    return f"--{field_name.replace('_', '-')} ({env_name(field_name)})"


def _field_docs() -> dict[str, str]:
    """Attribute docstrings, read from the source, so --help and the code never drift apart."""
    import ast
    import inspect
    import itertools

    tree = ast.parse(inspect.getsource(ServerConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(
            following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = str(following.value.value)
    return docs


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """One flag per field; a set VAE_SERVE_* variable replaces the field's default."""
    parser = argparse.ArgumentParser(
        prog="vae-serve",
        description="Serve a VAE from the model repository over gRPC (vae.v1.VaeService, "
        "health, reflection) with dynamic batching and Prometheus metrics. Every flag can "
        "also be set by its VAE_SERVE_* environment variable; a flag wins over the variable.",
    )
    docs = _field_docs()
    choices = {"device": DEVICES, "log_level": LOG_LEVELS}
    for f in fields(ServerConfig):
        kind: Callable[[str], Any] = type(f.default)
        default = f.default
        if env_name(f.name) in environ:
            try:
                default = kind(environ[env_name(f.name)])
            except ValueError:
                parser.error(f"{env_name(f.name)}={environ[env_name(f.name)]!r} is not a "
                             f"valid {f.type}")
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=str.upper if f.name == "log_level" else kind,
            default=default,
            choices=choices.get(f.name),
            metavar=None if f.name in choices else f.name.split("_")[-1].upper(),
            help=f"{docs.get(f.name, '')} (default: {default}; env {env_name(f.name)})",
        )
    return parser
