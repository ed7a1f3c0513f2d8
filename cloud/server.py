"""`tandem serve cloud`: load the cloud model and serve the Cloud gRPC service."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from prometheus_client import CollectorRegistry

from tandem.cloud.config import CloudConfig
from tandem.cloud.engine import MAX_VERIFY_DRAFT, CloudEngine
from tandem.cloud.metrics import EngineMetrics
from tandem.shared.model_loader import load_causal_lm
from tandem.cloud.model_runner import build_runner, num_blocks_for_budget
from tandem.cloud.service import CloudServicer
from tandem.cloud.sessions import SessionStore
from tandem.shared.backpressure import Backpressure
from tandem.shared.grpc_server import request_limit_bytes, serve
from tandem.shared.log import setup_logging
from tandem.shared.models import eos_token_ids, load_tokenizer, resolve_model
from tandem.shared.tier_handler import warm_up
from tandem.v1 import cloud_pb2_grpc

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def build_engine(config: CloudConfig, hf_model: PreTrainedModel, stop_token_ids: Sequence[int],
                 registry: CollectorRegistry | None = None) -> CloudEngine:
    """The engine for ``hf_model``: KV pool sized from config.kv_cache_mb."""
    num_blocks = num_blocks_for_budget(hf_model.config, hf_model.dtype,
                                       config.kv_cache_mb * 2**20, config.block_size)
    runner = build_runner(hf_model, num_blocks, config.block_size, config.context_window)
    sessions = SessionStore(config.max_sessions, config.max_session_tokens,
                            config.session_idle_seconds)
    registry = registry if registry is not None else CollectorRegistry()
    backpressure = Backpressure("cloud", config.max_num_seqs, config.max_waiting, registry)
    return CloudEngine(runner, config.block_size, config.max_num_seqs,
                       config.max_batched_tokens, backpressure, sessions, stop_token_ids,
                       config.prefix_caching, EngineMetrics(registry))


async def run(config: CloudConfig) -> None:
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source)
    eos = eos_token_ids(tokenizer)
    registry = CollectorRegistry()
    if config.engine == "vllm":
        from transformers import AutoConfig

        from tandem.cloud.peers.vllm_peer import model_folder
        from tandem.cloud.vllm_engine import VllmEngine

        folder = model_folder(source)
        engine = VllmEngine(config, str(folder), registry)
        vocab_size = AutoConfig.from_pretrained(folder).vocab_size
        await warm_up(engine, None, tokenizer.bos_token_id or 0)
    else:
        model = load_causal_lm(source, config.dtype)
        vocab_size = model.config.vocab_size
        engine = build_engine(config, model, eos, registry)
        await warm_up(engine, engine.backpressure, tokenizer.bos_token_id or 0)
    servicer = CloudServicer(config, engine, tokenizer, eos, vocab_size, registry)
    try:
        await serve("cloud", config,
                    lambda server: cloud_pb2_grpc.add_CloudServicer_to_server(servicer, server),
                    registry, request_limit_bytes(
                        config.context_window, servicer.handler.bytes_per_token,
                        # a sampled Verify's draft distributions: ids and probabilities
                        distribution_bytes=MAX_VERIFY_DRAFT * vocab_size * 9))
    finally:
        engine.close()


def main(config: CloudConfig) -> None:
    if config.engine == "vllm":  # vLLM has its own venv: this command continues there
        from tandem.cloud.vllm_engine import ensure_vllm_interpreter

        ensure_vllm_interpreter(config.threads)
    setup_logging("cloud", config.log_level)
    asyncio.run(run(config))
