"""The edge tier's requests without a transport: Generate/GenerateStream through the
shared tier handler, Draft through the backend, each validated before any model work.
The gRPC servicer (edge/service.py) and the SDK's in-process edge both run on it."""

from __future__ import annotations

import time

import numpy as np
from prometheus_client import CollectorRegistry

from tandem.edge.backend import EdgeBackend
from tandem.edge.config import EdgeConfig
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import InvalidArgument
from tandem.shared.sampling import SamplingParams, TokenSampler
from tandem.shared.tier_handler import TierGenerateHandler, TierMetrics, TokenRequest
from tandem.v1 import common_pb2, edge_pb2


def distribution_to_pb(probs: np.ndarray) -> common_pb2.TokenDistribution:
    """Sparse when top-k/top-p zeroed most of the vocabulary, dense otherwise."""
    support = np.flatnonzero(probs)
    if len(support) * 2 < len(probs):
        return common_pb2.TokenDistribution(token_ids=support.tolist(),
                                            probs=probs[support].tolist())
    return common_pb2.TokenDistribution(probs=probs.tolist())


class EdgeHandler:
    def __init__(self, config: EdgeConfig, backend: EdgeBackend, tokenizer: object,
                 eos_token_ids: list[int], registry: CollectorRegistry) -> None:
        self.config = config
        self.backend = backend
        self.metrics = TierMetrics("edge", registry)
        self.generation = TierGenerateHandler(backend, tokenizer, config, eos_token_ids,  # type: ignore[arg-type]
                                              self.metrics)
        self.info = common_pb2.ModelInfo(
            model=config.model, backend=config.backend, dtype=backend.dtype,
            context_window=config.context_window, vocab_size=backend.vocab_size,
            eos_token_ids=eos_token_ids, max_tokens_cap=config.max_tokens_cap,
            slots=backend.slots)

    async def draft(self, request: edge_pb2.DraftRequest,
                    deadline: Deadline | None = None) -> edge_pb2.DraftResponse:
        """Up to ``num_tokens`` tokens after ``tokens``, continuing the cached prefix."""
        self.metrics.requests.labels("Draft").inc()
        started = time.perf_counter_ns()
        tokens = list(request.tokens)
        self._validate_draft(request, tokens)
        sampling = SamplingParams.from_pb(request.sampling, default_max_tokens=request.num_tokens,
                                          max_tokens_cap=self.config.max_tokens_cap)
        job = TokenRequest(tokens, TokenSampler(sampling), request.tenant, deadline)
        result = await self.backend.draft(job, request.num_tokens, self.generation.eos_token_ids,
                                          request.return_distributions)
        self.metrics.count("Draft", len(result.tokens), len(result.tokens))
        return edge_pb2.DraftResponse(
            tokens=result.tokens, probs=result.probs, cached_tokens=result.cached_tokens,
            computed_tokens=result.computed_tokens,
            distributions=[distribution_to_pb(d) for d in result.distributions or []],
            timings=common_pb2.Timings(total_ns=time.perf_counter_ns() - started,
                                       queue_ns=int(job.waited_s * 1e9)))

    def _validate_draft(self, request: edge_pb2.DraftRequest, tokens: list[int]) -> None:
        if not request.session_id:
            raise InvalidArgument("session_id: required for Draft")
        if not tokens:
            raise InvalidArgument("tokens: must not be empty")
        if not 1 <= request.num_tokens <= self.config.max_draft_tokens:
            raise InvalidArgument(
                f"num_tokens: must be in [1, {self.config.max_draft_tokens}], got {request.num_tokens}")
        vocab = self.backend.vocab_size
        if any(not 0 <= t < vocab for t in tokens):
            raise InvalidArgument(f"tokens: ids must be in [0, {vocab})")
        if len(tokens) + request.num_tokens > self.config.context_window:
            raise InvalidArgument(
                f"tokens: sequence exceeds the context window of {self.config.context_window}")
