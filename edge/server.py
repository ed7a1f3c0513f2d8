"""`tandem serve edge`: load the edge model and serve the Edge gRPC service."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from tandem.edge.backend import create_backend
from tandem.edge.config import EdgeConfig
from tandem.edge.handler import EdgeHandler
from tandem.edge.service import EdgeServicer
from tandem.shared.grpc_server import request_limit_bytes, serve
from tandem.shared.log import setup_logging
from tandem.shared.models import eos_token_ids, load_tokenizer, resolve_model
from tandem.v1 import edge_pb2_grpc


async def run(config: EdgeConfig) -> None:
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source)
    registry = CollectorRegistry()
    backend = create_backend(config, source, registry)
    await backend.warm_up(tokenizer.bos_token_id or 0)
    servicer = EdgeServicer(EdgeHandler(config, backend, tokenizer, eos_token_ids(tokenizer),
                                        registry))
    try:
        await serve("edge", config,
                    lambda server: edge_pb2_grpc.add_EdgeServicer_to_server(servicer, server),
                    registry, request_limit_bytes(config.context_window,
                                                  servicer.handler.bytes_per_token))
    finally:
        backend.close()


def main(config: EdgeConfig) -> None:
    setup_logging("edge", config.log_level)
    asyncio.run(run(config))
