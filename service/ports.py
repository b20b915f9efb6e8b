"""Is a port free? Asked before the model loads (and before workers fork), without grpc."""

from __future__ import annotations

import socket


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
