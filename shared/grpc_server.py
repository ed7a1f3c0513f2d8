"""Running a Tandem gRPC service: health, error mapping, metrics, readiness and
graceful shutdown, the same way for every service."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from tandem.shared.errors import ErrorMappingInterceptor
from tandem.shared.log import log_event
from tandem.shared.metrics import MetricsServer
from tandem.shared.service_config import ServiceConfig

logger = logging.getLogger(__name__)

# Generous message limits: Verify/Draft carry whole token sequences.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

Registrar = Callable[[grpc.aio.Server], None]


def write_ready_file(path: str, payload: dict[str, object]) -> None:
    """Atomically publish where the service listens (tests and `tandem up` read it)."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


async def serve(
    name: str,
    config: ServiceConfig,
    register: Registrar,
    registry: CollectorRegistry,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight RPCs and stop.

    ``register`` adds the service's servicers; models must already be loaded, so the
    service reports SERVING as soon as it listens.
    """
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()], options=CHANNEL_OPTIONS)
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise RuntimeError(f"could not bind {config.host}:{config.port}")
    metrics = None
    if config.metrics_port >= 0:
        metrics = MetricsServer(registry, config.host, config.metrics_port)
    await server.start()
    for service in ("", f"tandem.v1.{name.capitalize()}"):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    address = f"{config.host}:{port}"
    log_event(logger, f"{name} serving", address=address,
              metrics_port=metrics.port if metrics else None)
    if config.ready_file:
        write_ready_file(config.ready_file, {
            "address": address, "metrics_port": metrics.port if metrics else None,
            "pid": os.getpid()})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log_event(logger, f"{name} draining", grace_s=config.drain_seconds)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(config.drain_seconds)
    if metrics:
        metrics.close()
    log_event(logger, f"{name} stopped")
