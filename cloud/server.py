"""`tandem serve cloud`: load the cloud model and serve the Cloud gRPC service."""

from __future__ import annotations

import asyncio
import os

import torch
from prometheus_client import CollectorRegistry

from tandem.cloud.config import CloudConfig
from tandem.cloud.engine import CloudEngine, new_kv_cache
from tandem.cloud.model_loader import load_causal_lm
from tandem.cloud.service import CloudServicer
from tandem.cloud.sessions import SessionStore
from tandem.shared.grpc_server import serve
from tandem.shared.log import setup_logging
from tandem.shared.models import eos_token_ids, load_tokenizer, resolve_model
from tandem.v1 import cloud_pb2_grpc


async def run(config: CloudConfig) -> None:
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source)
    model = load_causal_lm(source, config.dtype)
    sessions = SessionStore(config.max_sessions, config.max_session_tokens,
                            config.session_idle_seconds, new_kv_cache)
    engine = CloudEngine(model, sessions)
    registry = CollectorRegistry()
    servicer = CloudServicer(config, engine, tokenizer, eos_token_ids(tokenizer),
                             model.config.vocab_size, registry)
    try:
        await serve("cloud", config,
                    lambda server: cloud_pb2_grpc.add_CloudServicer_to_server(servicer, server),
                    registry)
    finally:
        engine.close()


def main(config: CloudConfig) -> None:
    setup_logging("cloud", config.log_level)
    asyncio.run(run(config))
