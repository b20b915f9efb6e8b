"""`vae-serve`: parse flags (VAE_SERVE_* twins), configure logging, serve until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable

from service.config import ConfigError, ServerConfig


def main(argv: list[str] | None = None) -> int:
    try:
        config = ServerConfig.from_args(argv)
    except ConfigError as err:
        print(f"vae-serve: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.workers == 1:
        return serve_process(config)
    from service.cores import usable_cores
    from service.transport.ports import listening_ports, require_free_ports
    from service.transport.workers import Supervisor

    try:  # once here: the workers share the ports, so they cannot tell one is taken
        require_free_ports(config.host, listening_ports(config))
    except OSError as err:
        print(f"vae-serve: error: {err}", file=sys.stderr)
        return 2
    return Supervisor(config, config.workers or usable_cores(), serve_process).run()


def serve_process(config: ServerConfig, on_serving: Callable[[], None] | None = None) -> int:
    """One server process until SIGTERM: 0, or 2 with one line for a bad setting or model."""
    from service.transport import log_filter

    log_filter.install()
    try:
        from service.errors import ServiceError
        from service.plane.repository import GraphError, IntegrityError, ManifestError
        from service.transport.server import serve
    except ImportError as err:
        print(f"vae-serve: error: the server needs {err.name}, which this install lacks; "
              "install vae-serve[cpu] (or vae-serve[gpu] on a CUDA machine)", file=sys.stderr)
        return 2

    try:
        asyncio.run(serve(config, on_serving))
    except (ServiceError, ManifestError, IntegrityError, GraphError, OSError) as err:
        print(f"vae-serve: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
