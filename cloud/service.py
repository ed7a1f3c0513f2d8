"""The Cloud gRPC servicer: converts protobuf in and out and delegates to the engine."""

from __future__ import annotations

import time

import grpc
from prometheus_client import CollectorRegistry, Gauge

from tandem.cloud.config import CloudConfig
from tandem.cloud.engine import CloudEngine, validate_verify
from tandem.cloud.sampler import dense_distributions
from tandem.shared.deadlines import Deadline
from tandem.shared.sampling import SamplingParams
from tandem.shared.tier_handler import TierGenerateHandler, TierMetrics
from tandem.shared.tier_rpc import TierServicer
from tandem.v1 import cloud_pb2, cloud_pb2_grpc, common_pb2


class CloudServicer(TierServicer, cloud_pb2_grpc.CloudServicer):
    def __init__(self, config: CloudConfig, engine: CloudEngine, tokenizer: object,
                 eos_token_ids: list[int], vocab_size: int, registry: CollectorRegistry) -> None:
        self.config = config
        self.engine = engine
        self.vocab_size = vocab_size
        info = common_pb2.ModelInfo(
            model=config.model, backend="vllm" if config.engine == "vllm" else "torch",
            dtype=config.dtype,
            context_window=config.context_window, vocab_size=vocab_size,
            eos_token_ids=eos_token_ids, max_tokens_cap=config.max_tokens_cap)
        handler = TierGenerateHandler(engine, tokenizer, config, eos_token_ids,  # type: ignore[arg-type]
                                      TierMetrics("cloud", registry))
        super().__init__(handler, info)
        self.sessions = Gauge("tandem_cloud_sessions", "Speculative sessions with cached KV.",
                              registry=registry)
        self.sessions.set_function(lambda: len(engine.sessions))

    async def Verify(self, request: cloud_pb2.VerifyRequest,
                     context: grpc.aio.ServicerContext) -> cloud_pb2.VerifyResponse:
        self.metrics.requests.labels("Verify").inc()
        started = time.perf_counter_ns()
        tokens, draft = list(request.tokens), list(request.draft_tokens)
        sampling = SamplingParams.from_pb(request.sampling, default_max_tokens=1,
                                          max_tokens_cap=self.config.max_tokens_cap)
        validate_verify(tokens, draft, request.draft_probs, len(request.draft_distributions),
                        request.session_id, self.vocab_size, self.config.context_window,
                        sampling, leniency=request.leniency)
        # draft_probs alone cannot give the residual distribution: without
        # draft_distributions a sampled round uses target sampling (also lossless).
        dists = (dense_distributions(request.draft_distributions, self.vocab_size)
                 if request.draft_distributions and not sampling.greedy else None)
        result = await self.engine.verify(request.tenant, request.session_id, tokens, draft,
                                          sampling, dists, Deadline(context.time_remaining()),
                                          leniency=request.leniency,
                                          score_draft=request.score_draft)
        self.metrics.count("Verify", result.accepted + 1, 1)
        return cloud_pb2.VerifyResponse(
            accepted=result.accepted, next_token=result.next_token,
            cached_tokens=result.cached_tokens, computed_tokens=result.computed_tokens,
            draft_logprobs=result.draft_logprobs, draft_ranks=result.draft_ranks,
            timings=common_pb2.Timings(total_ns=time.perf_counter_ns() - started))

    async def EndSession(self, request: cloud_pb2.EndSessionRequest,
                         context: grpc.aio.ServicerContext) -> cloud_pb2.EndSessionResponse:
        found = self.engine.end_session(request.tenant, request.session_id)
        return cloud_pb2.EndSessionResponse(found=found)

    async def Load(self, request: common_pb2.LoadRequest,
                   context: grpc.aio.ServicerContext) -> common_pb2.TierLoad:
        return self.engine.load()
