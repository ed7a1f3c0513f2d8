"""`tandem serve router`: serve the Router gRPC service in front of the edge and cloud."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from tandem.router.config import RouterConfig
from tandem.router.core import RouterCore
from tandem.router.metrics import RouterMetrics
from tandem.router.policies.base import create_policies
from tandem.router.resources import build_resources
from tandem.router.service import RouterServicer
from tandem.router.state import create_state_store
from tandem.router.tiers import GrpcTiers
from tandem.shared.grpc_server import request_limit_bytes, serve
from tandem.shared.log import setup_logging
from tandem.v1 import router_pb2_grpc


async def run(config: RouterConfig) -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    state = create_state_store(config.state, lambda op: metrics.state_fallbacks.labels(op).inc(),
                               config.state_timeout_seconds)
    resources = build_resources(config, state)
    tiers = GrpcTiers(config.edge_address, config.cloud_address, config.inject_cloud_rtt_ms / 1000)
    policies = create_policies(config, resources)
    if config.default_policy not in policies:
        raise ValueError(f"default_policy {config.default_policy!r} is not one of {sorted(policies)}")
    core = RouterCore(config, resources.tokenizer, tiers, state, policies, metrics)
    servicer = RouterServicer(core)
    try:
        await serve("router", config,
                    lambda server: router_pb2_grpc.add_RouterServicer_to_server(servicer, server),
                    registry, request_limit_bytes(config.context_window, core.bytes_per_token))
    finally:
        await tiers.close()
        await state.close()


def main(config: RouterConfig) -> None:
    setup_logging("router", config.log_level)
    asyncio.run(run(config))
