"""Container health check: asks the server's grpc.health.v1 service, exits 0 when SERVING.

Used by the image's HEALTHCHECK (docker, podman with --format docker) and by deploy/smoke.sh
from the host. Kubernetes does not need it: its probes speak gRPC health natively.
Needs grpcio and grpcio-health-checking only (both in the serving image).
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    # With TLS on, the gRPC port wants a certificate; the plaintext health-only port does not.
    tls = bool(os.environ.get("VAE_SERVE_TLS_CERT_FILE"))
    port = (os.environ.get("VAE_SERVE_HEALTH_PORT", "50052") if tls
            else os.environ.get("VAE_SERVE_PORT", "50051"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=f"127.0.0.1:{port}", help="host:port of the gRPC server")
    parser.add_argument("--service", default="vae.v1.VaeService", help='service name; "" = overall')
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds for the call")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as error:
            print(f"{args.target} {args.service!r}: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.target} {args.service!r}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
