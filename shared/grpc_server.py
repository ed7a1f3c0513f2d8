"""Running a Tandem gRPC service: health, error mapping, metrics, readiness and
graceful shutdown, the same way for every service."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from tandem.shared.drain import DrainGate
from tandem.shared.errors import ErrorMappingInterceptor
from tandem.shared.grpc_security import InternalTokenInterceptor, server_credentials
from tandem.shared.log import log_event
from tandem.shared.memory import freeze_startup_objects
from tandem.shared.metrics import MetricsServer
from tandem.shared.service_config import ServiceConfig

logger = logging.getLogger(__name__)

# Client channels between Tandem's own services: Verify/Draft carry whole token
# sequences and, for sampled drafts, full distributions. What a server accepts is bounded
# by its own limit (request_limit_bytes).
# A channel whose server went away retries the connection after 0.1 s, then backs off
# to at most 1 s: gRPC's default backoff (1 s growing 1.6x to 120 s) left the router
# UNAVAILABLE for ~20 s after a cloud that restarted in 6.7 s was serving again.
# (min_reconnect_backoff_ms stays at its default: gRPC also uses it as the connect
# timeout, and 100 ms would fail every handshake slower than that, e.g. TLS over a WAN.)
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# Room for the fields of a request besides its prompt or token sequence.
MESSAGE_OVERHEAD_BYTES = 64 * 1024
# A token id as a protobuf varint: at most 5 bytes.
TOKEN_ID_BYTES = 5


def request_limit_bytes(context_window: int, bytes_per_token: int,
                        distribution_bytes: int = 0) -> int:
    """The largest request message a service needs to accept: a prompt that can fit the
    context window (as text or token ids), plus the draft distributions a Verify may carry.
    Anything larger is refused by gRPC before it is parsed (RESOURCE_EXHAUSTED)."""
    sequence = context_window * max(bytes_per_token, TOKEN_ID_BYTES)
    return sequence + distribution_bytes + MESSAGE_OVERHEAD_BYTES

Registrar = Callable[[grpc.aio.Server], None]


class SideServer(Protocol):
    """Another front served by the process beside its gRPC server (the router's HTTP
    API): started once the gRPC server listens, stopped while it drains."""

    async def start(self) -> dict[str, object]:
        """Start serving; returns the fields it adds to the ready file."""

    async def stop(self, grace_s: float) -> None: ...


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
    max_request_bytes: int,
    side_servers: Sequence[SideServer] = (),
    internal: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight RPCs and stop.

    ``register`` adds the service's servicers; models must already be loaded, so the
    service reports SERVING as soon as it listens. Requests over ``max_request_bytes``
    are refused before they are parsed. An ``internal`` service (a tier) answers only
    trusted clients when the config names a CA (mTLS) or an internal token; the router
    (not internal) authenticates its clients itself and uses those to reach the tiers.
    """
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024),
               ("grpc.max_receive_message_length", max_request_bytes)]
    gate = DrainGate(name)
    interceptors: list[grpc.aio.ServerInterceptor] = [gate, ErrorMappingInterceptor()]
    if internal and config.internal_token:
        interceptors.insert(0, InternalTokenInterceptor(config.internal_token))
    server = grpc.aio.server(interceptors=interceptors, options=options)
    register(server)
    freeze_startup_objects()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    credentials = server_credentials(config, internal)
    address = f"{config.host}:{config.port}"
    port = (server.add_secure_port(address, credentials) if credentials
            else server.add_insecure_port(address))
    if port == 0:
        raise RuntimeError(f"could not bind {config.host}:{config.port}")
    metrics = None
    if config.metrics_port >= 0:
        metrics = MetricsServer(registry, config.host, config.metrics_port)
    await server.start()
    for service in ("", f"tandem.v1.{name.capitalize()}"):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    address = f"{config.host}:{port}"
    # "tls": a prober without the service's CA (and client certificate) cannot check its
    # health, so the ready file (written once SERVING) is the signal.
    ready: dict[str, object] = {"address": address,
                                "metrics_port": metrics.port if metrics else None,
                                "pid": os.getpid(), "tls": credentials is not None}
    for side in side_servers:
        ready.update(await side.start())
    log_event(logger, f"{name} serving", **{k: v for k, v in ready.items() if k != "pid"})
    if config.ready_file:
        write_ready_file(config.ready_file, ready)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await _drain(name, config.drain_seconds, server, health_servicer, gate, side_servers)
    if metrics:
        metrics.close()
    log_event(logger, f"{name} stopped")


# After the drain, calls still running get this long to end before they are cancelled.
STOP_GRACE_S = 1.0


async def _drain(name: str, drain_s: float, server: grpc.aio.Server,
                 health_servicer: health.aio.HealthServicer, gate: DrainGate,
                 side_servers: Sequence[SideServer]) -> None:
    """Health NOT_SERVING and new calls refused at once; in-flight calls (and the side
    servers' requests) finish for up to ``drain_s``; then the server stops."""
    started = time.monotonic()
    await health_servicer.enter_graceful_shutdown()
    gate.close()
    log_event(logger, f"{name} draining", in_flight=gate.in_flight, timeout_s=drain_s)
    sides = [asyncio.ensure_future(side.stop(drain_s)) for side in side_servers]
    finished = await gate.wait_idle(drain_s)
    cut = gate.in_flight
    await server.stop(STOP_GRACE_S)
    await asyncio.gather(*sides)
    log_event(logger, f"{name} drained", finished=finished, cut=cut,
              seconds=round(time.monotonic() - started, 3),
              level=logging.INFO if finished else logging.WARNING)
