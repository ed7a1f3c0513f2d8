"""`tandem serve router`: serve the Router gRPC service in front of the edge and cloud."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from tandem.router.config import RouterConfig
from tandem.router.metrics import RouterMetrics
from tandem.router.policies.base import create_policies
from tandem.router.service import RouterServicer
from tandem.router.state import create_state_store
from tandem.router.tiers import Tiers
from tandem.shared.grpc_server import serve
from tandem.shared.log import setup_logging
from tandem.shared.models import load_tokenizer, resolve_model
from tandem.v1 import router_pb2_grpc


async def run(config: RouterConfig) -> None:
    tokenizer = load_tokenizer(resolve_model(config.model))
    state = create_state_store(config.state)
    tiers = Tiers(config.edge_address, config.cloud_address)
    registry = CollectorRegistry()
    policies = create_policies(config, tokenizer)
    if config.default_policy not in policies:
        raise ValueError(f"default_policy {config.default_policy!r} is not one of {sorted(policies)}")
    servicer = RouterServicer(config, tokenizer, tiers, state, policies, RouterMetrics(registry))
    try:
        await serve("router", config,
                    lambda server: router_pb2_grpc.add_RouterServicer_to_server(servicer, server),
                    registry)
    finally:
        await tiers.close()
        await state.close()


def main(config: RouterConfig) -> None:
    setup_logging("router", config.log_level)
    asyncio.run(run(config))
