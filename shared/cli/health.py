"""`tandem health [ADDRESS]`: exit 0 when the service at ADDRESS answers grpc.health.v1
with SERVING, 1 otherwise (container HEALTHCHECKs use it)."""

from __future__ import annotations

import argparse
import sys

import grpc

from tandem.shared.process import health_status


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="Check a service's grpc.health.v1 status (exit 0: SERVING).")
    p.add_argument("address", nargs="?", default="127.0.0.1:50051",
                   help="host:port of the service (default: the router's).")
    p.add_argument("--timeout", type=float, default=3.0, help="Seconds to wait for the answer.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2

    try:
        status = health_status(args.address, args.timeout)
    except grpc.RpcError as exc:
        print(f"{args.address}: {exc.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{args.address}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1
