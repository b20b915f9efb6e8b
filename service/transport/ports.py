"""Is a port free? Asked before the model loads (and before workers fork), without grpc."""

from __future__ import annotations

import socket

from service.config import ServerConfig


def require_free_port(host: str, port: int, flag: str) -> None:
    """Fail in one line before the model loads, not after, when another process holds the port."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise OSError(f"{flag} {port}: {host}:{port} is in use or not bindable "
                          f"({err.strerror}); stop the other server or pick another port "
                          "(0 = any free port)") from None


def listening_ports(config: ServerConfig) -> dict[str, int]:
    """Flag -> port of each port the server binds by number (0 = any free one, -1 = off)."""
    ports = {"--port": config.port, "--metrics-port": config.metrics_port}
    if config.tls:
        ports["--health-port"] = config.health_port
    return {flag: port for flag, port in ports.items() if port > 0}


def require_free_ports(host: str, ports: dict[str, int]) -> None:
    """Each flag's port free, and no two flags on one port; the first problem, in one line."""
    claimed: dict[int, str] = {}
    for flag, port in ports.items():
        if port in claimed:
            raise OSError(f"{flag} {port} is also {claimed[port]}: give each port flag its own "
                          "port")
        claimed[port] = flag
        require_free_port(host, port, flag)
