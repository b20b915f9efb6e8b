"""ServerConfig: the only place that holds a server default or reads a VAE_SERVE_* variable.

Each field carries its help text and its parser (`setting(...)`), so a flag, its environment
twin and `--help` cannot drift apart. Precedence: flag, then environment, then default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from service.cores import usable_cores

ENV_PREFIX = "VAE_SERVE_"
DEVICES = ("auto", "cuda", "cpu")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

Parser = Callable[[str], Any]


class ConfigError(ValueError):
    """A setting that does not parse or is out of range; names the flag, its variable, what is valid."""


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off, any case."""
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise ValueError(f"expected one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)}")


def parse_optional_path(text: str) -> Path | None:
    """An empty value means unset."""
    return Path(text) if text.strip() else None


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("expected an integer") from None


def parse_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError("expected a number") from None


def parse_count(text: str) -> int:
    """A count, or auto (0), which the setting's help explains."""
    if text.strip().lower() == "auto":
        return 0
    try:
        return parse_int(text)
    except ValueError:
        raise ValueError("expected an integer or auto") from None


@dataclass(frozen=True)
class HeaderCredential:
    """A gRPC metadata key and the value a caller must send with it; the value never shows."""

    key: str
    value: str = field(repr=False)


_HEADER_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def parse_header_credential(text: str) -> HeaderCredential | None:
    """KEY=VALUE, as gRPC metadata: a lower-case key, a printable ASCII value; empty = unset."""
    if not text.strip():
        return None
    key, equals, value = text.strip().partition("=")
    if not equals:
        raise ValueError("expected KEY=VALUE")
    if not key or not set(key) <= _HEADER_KEY_CHARS or key.startswith("grpc-") or \
            key.endswith("-bin"):
        raise ValueError("KEY must be lower-case a-z, 0-9, '-', '_', '.', not start with 'grpc-' "
                         "nor end with '-bin' (gRPC metadata keys)")
    if not value or not all(" " <= c <= "~" for c in value):
        raise ValueError("VALUE must not be empty and must be printable ASCII")
    return HeaderCredential(key, value)


def parse_choice(choices: Sequence[str], upper: bool = False) -> Parser:
    def parse(text: str) -> str:
        value = text.strip().upper() if upper else text.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse


def setting(default: Any, help: str, parse: Parser, metavar: str | None = None) -> Any:
    """A config field: its default, one line of help (with units) and the parser of its text."""
    return field(default=default, metadata={"help": help, "parse": parse, "metavar": metavar})


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one server process. Each field is a flag --field-name and VAE_SERVE_FIELD_NAME."""

    model_repo: Path = setting(Path("models"), "model repository folder written by vae-export",
                               Path, "PATH")
    model_name: str = setting("vae", "model folder inside the repository", str, "NAME")
    model_version: int = setting(0, "version to serve; 0 = the newest published version",
                                 parse_int, "N")
    poll_interval_s: float = setting(10.0, "seconds between rescans of the repository for a new "
                                     "version; 0 = only on SIGHUP", parse_float, "S")
    host: str = setting("127.0.0.1", "address to bind; 0.0.0.0 inside a container", str, "ADDR")
    port: int = setting(50051, "gRPC port; 0 picks a free port (tests)", parse_int, "PORT")
    metrics_port: int = setting(8002, "Prometheus /metrics HTTP port; 0 picks a free port, -1 "
                                "turns the endpoint off", parse_int, "PORT")
    device: str = setting("auto", "auto: CUDA when a GPU and onnxruntime-gpu are there, else CPU; "
                          "cuda: GPU or refuse to start", parse_choice(DEVICES))
    max_batch_size: int = setting(64, "most rows per ONNX Runtime call; larger requests are split "
                                  "and reassembled", parse_int, "ROWS")
    max_queue_delay_us: int = setting(0, "longest a queued row waits for company before a partial "
                                      "batch runs, microseconds; 0 = at once while the CPU "
                                      "has room, up to 5 ms while it is full", parse_int, "US")
    max_queue_rows: int = setting(4096, "rows queued per graph before new requests get "
                                  "RESOURCE_EXHAUSTED", parse_int, "ROWS")
    instances: int = setting(0, "batches each graph runs at once (like Triton's instance "
                             "count); auto (0) = 1 on CUDA, on CPU one per intra-op thread, a "
                             "batch beside another running single-threaded", parse_count,
                             "N|auto")
    inline_below_us: int = setting(150, "batches whose ONNX Runtime time measured below this "
                                   "run on the event loop, skipping the hand-off to a runner "
                                   "thread; 0 = always hand off", parse_int, "US")
    intra_op_threads: int = setting(0, "ONNX Runtime intra-op threads per session; 0 = the "
                                    "cores this process may run on (its CPU affinity: "
                                    "taskset, a container's cpuset), capped by its CPU quota "
                                    "(a Kubernetes CPU limit)", parse_int, "N")
    serial_below_rows: int = setting(8, "CPU: batches of fewer rows run on a single-threaded "
                                     "session of the same graph, which answers small batches "
                                     "sooner than waking intra-op threads; 0 = off",
                                     parse_int, "ROWS")
    max_message_bytes: int = setting(0, "largest gRPC message received or sent, bytes; 0 = "
                                     "derived from the model and the queue settings (see "
                                     "docs/serving.md)", parse_int, "BYTES")
    max_sample_count: int = setting(1024, "largest Sample.count and Interpolate.steps accepted",
                                    parse_int, "N")
    max_score_samples: int = setting(1000, "largest Score.samples accepted: importance samples "
                                     "per image of the IWAE bound (each costs one decoder row)",
                                     parse_int, "N")
    workers: int = setting(1, "server processes sharing --port (SO_REUSEPORT), each with its own "
                           "sessions; auto (0) = one per usable core", parse_count, "N|auto")
    drain_delay_s: float = setting(0.0, "seconds the server keeps serving after SIGTERM with "
                                   "health NOT_SERVING, while endpoints and clients move to "
                                   "other replicas, before it sends GOAWAY; Kubernetes: a few "
                                   "seconds (the manifests set 5)", parse_float, "S")
    grace_s: float = setting(10.0, "seconds in-flight requests get to finish after GOAWAY before "
                             "the server cancels them and exits", parse_float, "S")
    max_streams: int = setting(1024, "long-lived streams (health Watch, reflection) open at once "
                               "per port; more get RESOURCE_EXHAUSTED. Model calls have their "
                               "own bound (max_queue_rows)", parse_int, "N")
    log_level: str = setting("INFO", "logging level", parse_choice(LOG_LEVELS, upper=True))

    # Transport security (docs/serving.md, "Transport security"). The files are re-read when
    # they change on disk; the metrics port stays plaintext.
    tls_cert_file: Path | None = setting(None, "PEM certificate chain for TLS on --port; with "
                                         "--tls-key-file", parse_optional_path, "PATH")
    tls_key_file: Path | None = setting(None, "PEM private key (unencrypted) of --tls-cert-file",
                                        parse_optional_path, "PATH")
    tls_client_ca_file: Path | None = setting(None, "PEM CA certificates: mutual TLS, clients "
                                              "must present a certificate signed by one",
                                              parse_optional_path, "PATH")
    # Repository control (docs/serving.md, "Who may change what is served").
    repository_control: bool = setting(False, "on: v2 RepositoryModelLoad/Unload may change the "
                                       "served version, for callers sending "
                                       "--repository-control-header; off: they are refused "
                                       "(RepositoryIndex answers either way)", parse_bool,
                                       "on|off")
    repository_control_header: HeaderCredential | None = setting(
        None, "KEY=VALUE: the gRPC metadata header a repository-control call must carry; a "
        "secret: give it by the environment variable", parse_header_credential, "KEY=VALUE")
    health_port: int = setting(50052, "plaintext port serving only grpc.health.v1.Health, for "
                               "Kubernetes probes, while TLS is on; 0 picks a free port, -1 "
                               "turns it off; unused without TLS", parse_int, "PORT")

    @property
    def tls(self) -> bool:
        """TLS on --port (the checks below make the key come with the certificate)."""
        return self.tls_cert_file is not None

    def runner_instances(self, on_gpu: bool) -> int:
        """--instances resolved: a GPU runs one batch at a time anyway; on CPU one batch per
        intra-op thread keeps every core busy under load (docs/architecture.md, Instances)."""
        if self.instances:
            return self.instances
        return 1 if on_gpu else self.session_threads()

    def session_threads(self) -> int:
        """--intra-op-threads resolved, always a number: ONNX Runtime's own default pins a
        thread to every physical core, outside the cores taskset or a cpuset allow."""
        return self.intra_op_threads or self.process_cores()

    def process_cores(self) -> int:
        """The cores one serving process counts as its own: the usable ones (service/cores.py)
        split evenly among --workers (auto: one per core)."""
        cores = usable_cores()
        return max(1, cores // (self.workers or cores))

    def __post_init__(self) -> None:
        positive = ("max_batch_size", "max_queue_rows", "max_sample_count", "max_score_samples",
                    "max_streams")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("model_version", "max_queue_delay_us", "inline_below_us", "intra_op_threads",
                     "serial_below_rows", "drain_delay_s", "grace_s", "max_message_bytes",
                     "poll_interval_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_flag(name)} must be >= 0, got {getattr(self, name)}")
        for name in ("workers", "instances"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_flag(name)} must be auto or >= 1, got {getattr(self, name)}")
        if self.workers != 1 and self.port == 0:
            raise ConfigError(f"{_flag('workers')} needs a fixed --port: every worker binds the "
                              "same one")
        if self.workers != 1 and self.tls and self.health_port == 0:
            raise ConfigError(f"{_flag('workers')} with TLS needs a fixed --health-port (or -1 "
                              "= off): every worker binds the same one")
        if not 0 <= self.port <= 65535 or not -1 <= self.metrics_port <= 65535:
            raise ConfigError("--port and --metrics-port must be within 0..65535")
        self._check_tls()
        self._check_repository_control()

    def _check_tls(self) -> None:
        """Which TLS settings go together; the files themselves are read by service/transport/tls.py."""
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError(f"{_flag('tls_cert_file')} and {_flag('tls_key_file')} go "
                              "together: set both or neither")
        if self.tls_client_ca_file is not None and not self.tls:
            raise ConfigError(f"{_flag('tls_client_ca_file')} needs {_flag_only('tls_cert_file')} "
                              f"and {_flag_only('tls_key_file')}: mutual TLS is TLS with client "
                              "certificates")
        if not -1 <= self.health_port <= 65535:
            raise ConfigError(f"{_flag('health_port')} must be within -1..65535, got "
                              f"{self.health_port}")
        if self.tls and self.port != 0 and self.health_port == self.port:
            raise ConfigError(f"{_flag('health_port')} must differ from --port ({self.port}): "
                              "the health port is plaintext")

    def _check_repository_control(self) -> None:
        """Control on means control for the holders of a credential, never for anyone."""
        header = _flag("repository_control_header")
        if self.repository_control and self.repository_control_header is None:
            raise ConfigError(f"--repository-control on needs {header}: only callers sending "
                              "that header may change the served version")
        if self.repository_control_header is not None and not self.repository_control:
            raise ConfigError(f"{header} goes with --repository-control on "
                              f"({env_name('repository_control')}=on)")

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> ServerConfig:
        """Flags, then VAE_SERVE_* variables, then defaults; a bad value raises ConfigError."""
        environ = os.environ if environ is None else environ
        args = build_parser().parse_args(argv)
        values: dict[str, Any] = {}
        for f in fields(cls):
            flag_text = getattr(args, f.name)
            if flag_text is not None:
                values[f.name] = _parse(f.name, flag_text, _flag_only(f.name))
            elif env_name(f.name) in environ:
                values[f.name] = _parse(f.name, environ[env_name(f.name)], env_name(f.name))
        return cls(**values)


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _flag_only(field_name: str) -> str:
    return f"--{field_name.replace('_', '-')}"


def _flag(field_name: str) -> str:
    return f"{_flag_only(field_name)} ({env_name(field_name)})"


def _parse(field_name: str, text: str, source: str) -> Any:
    parse: Parser = _FIELDS[field_name].metadata["parse"]
    try:
        return parse(text)
    except ValueError as err:
        raise ConfigError(f"{source}={text!r}: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    """One flag per field; values stay text here and are parsed by the field's own parser."""
    parser = argparse.ArgumentParser(
        prog="vae-serve",
        description="Serve a VAE from the model repository over gRPC, on one port: "
        "vae.v1.VaeService and the KServe v2 protocol (inference.GRPCInferenceService, for "
        "tritonclient and perf_analyzer), with health, reflection, dynamic batching and "
        "Prometheus metrics. Every flag can also be set by its VAE_SERVE_* environment "
        "variable; a flag wins over the variable.",
    )
    for f in fields(ServerConfig):
        meta = f.metadata
        choices = {"device": DEVICES, "log_level": LOG_LEVELS}.get(f.name)
        metavar = "{" + ",".join(choices) + "}" if choices else meta["metavar"]
        parser.add_argument(_flag_only(f.name), dest=f.name, default=None, metavar=metavar,
                            help=f"{meta['help']} (default: {_shown(f.default)}; env "
                            f"{env_name(f.name)})")
    return parser


def _shown(default: Any) -> Any:
    """What --help prints as a default: "unset" for an optional path."""
    return "unset" if default is None else default


_FIELDS = {f.name: f for f in fields(ServerConfig)}
