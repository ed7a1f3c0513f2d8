"""`tandem serve router`: serve the Router gRPC service, and its OpenAI-compatible HTTP
API beside it (router/http/), in front of the edge and cloud."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from tandem.router.auth import Gate, KeyRing
from tandem.router.config import RouterConfig
from tandem.router.core import RouterCore
from tandem.router.metrics import RouterMetrics
from tandem.router.policies.base import create_policies
from tandem.router.replica_tiers import ReplicaTiers
from tandem.router.resources import build_resources
from tandem.router.service import RouterServicer
from tandem.router.state import create_state_store
from tandem.shared.grpc_security import ChannelSecurity
from tandem.shared.grpc_server import SideServer, request_limit_bytes, serve
from tandem.shared.log import setup_logging
from tandem.v1 import router_pb2_grpc

# JSON can spell one prompt byte in up to 6 (\u0001): the HTTP body limit allows that.
JSON_ESCAPE_FACTOR = 6


async def run(config: RouterConfig) -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    state = create_state_store(config.state, lambda op: metrics.state_fallbacks.labels(op).inc(),
                               config.state_timeout_seconds)
    resources = build_resources(config, state)
    security = ChannelSecurity.of(config)
    tiers = ReplicaTiers.connect(config, state, metrics.replicas, security)
    policies = create_policies(config, resources)
    if config.default_policy not in policies:
        raise ValueError(f"default_policy {config.default_policy!r} is not one of {sorted(policies)}")
    core = RouterCore(config, resources.tokenizer, tiers, state, policies, metrics)
    keys = KeyRing.load(config.api_keys, set(policies)) if config.api_keys else None
    gate = Gate(core, keys, state)
    servicer = RouterServicer(gate)
    limit = request_limit_bytes(config.context_window, core.bytes_per_token)
    side_servers: list[SideServer] = []
    if config.http_port >= 0:
        from tandem.router.http.app import create_app
        from tandem.router.http.server import HttpFront

        app = create_app(gate, registry, tiers.readiness, limit * JSON_ESCAPE_FACTOR)
        side_servers.append(HttpFront(app, config.host, config.http_port, config.tls_cert,
                                      config.tls_key))
    try:
        await serve("router", config,
                    lambda server: router_pb2_grpc.add_RouterServicer_to_server(servicer, server),
                    registry, limit, side_servers, internal=False)
    finally:
        await tiers.close()
        await state.close()


def main(config: RouterConfig) -> None:
    setup_logging("router", config.log_level)
    asyncio.run(run(config))
