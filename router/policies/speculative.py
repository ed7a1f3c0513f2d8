"""`speculative`: the edge drafts k tokens, the cloud verifies them in one forward pass.

The output is the cloud's own output (greedy: token for token; sampling: the cloud's
distribution, by rejection sampling with the draft's distributions). Both tiers keep the
session's KV between rounds and reuse it by prefix, so neither re-processes the sequence;
rejected drafts are rolled back. Accepted draft tokens are labelled TIER_EDGE, the cloud's
correction/bonus token TIER_CLOUD.

The draft length adapts to the measured acceptance rate and round-trip time
(draft_length.py); when speculation is predicted to be slower than the cloud alone, the
rest of the answer is streamed by the cloud directly.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING

from tandem.router.latency import DECISION, spent
from tandem.router.policies.base import (Chunk, Outcome, Policy, PolicyResources, RoutedRequest,
                                         register_policy)
from tandem.router.policies.draft_length import DraftLengthController
from tandem.router.policies.emitter import Emitter
from tandem.shared.models import eos_token_ids
from tandem.v1 import cloud_pb2, common_pb2, edge_pb2

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tandem.router.config import RouterConfig
    from tandem.router.tiers import Tiers


@register_policy
class SpeculativePolicy(Policy):
    name = "speculative"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, draft_length: DraftLengthController) -> None:
        self.tokenizer = tokenizer
        self.eos = frozenset(eos_token_ids(tokenizer))
        self.draft_length = draft_length

    @classmethod
    def from_config(cls, config: RouterConfig, resources: PolicyResources) -> SpeculativePolicy:
        return cls(resources.tokenizer,
                   DraftLengthController(config.draft_tokens, adaptive=config.adaptive_draft))

    def run(self, request: RoutedRequest, tiers: Tiers, outcome: Outcome) -> AsyncIterator[Chunk]:
        return self.decode(request, tiers, outcome)

    async def decode(self, request: RoutedRequest, tiers: Tiers, outcome: Outcome,
                     first_draft: list[int] | None = None) -> AsyncIterator[Chunk]:
        """Speculative rounds until the answer ends; ``first_draft`` (e.g. an escalated edge
        answer) is verified first instead of asking the edge for a draft."""
        session = f"spec-{request.request_id}"
        tokens = list(request.prompt_ids)
        emitter = Emitter(self.tokenizer, request.sampling.stop, request.sampling.max_tokens,
                          self.eos, outcome)
        try:
            while not emitter.done:
                with spent(outcome.timings, DECISION):
                    abandon = first_draft is None and self.draft_length.should_abandon()
                if abandon:
                    outcome.decision.speculation_abandoned = True
                    async for chunk in self._finish_on_cloud(request, tiers, outcome, tokens,
                                                             emitter):
                        yield chunk
                    break
                if first_draft is not None:
                    draft, distributions = first_draft[:emitter.remaining - 1], []
                    outcome.usage.draft_tokens += len(draft)  # the edge already made them
                    first_draft = None
                else:
                    draft, distributions = await self._draft(tiers, request, session, tokens,
                                                             emitter.remaining - 1, outcome)
                accepted, next_token = await self._verify(tiers, request, session, tokens,
                                                          draft, distributions, outcome)
                for tier, ids in ((common_pb2.TIER_EDGE, accepted),
                                  (common_pb2.TIER_CLOUD, [next_token])):
                    chunk = emitter.push(tier, ids)
                    if chunk:
                        yield chunk
                    if emitter.done:
                        break
                tokens += accepted + [next_token]
            tail = emitter.flush()
            if tail:
                yield tail
        finally:  # free the session's KV on both tiers, after the reply
            outcome.after_reply.append(partial(tiers.end_session, request.tenant, session))

    async def _draft(self, tiers: Tiers, request: RoutedRequest, session: str,
                     tokens: list[int], room: int, outcome: Outcome
                     ) -> tuple[list[int], list[common_pb2.TokenDistribution]]:
        """The edge's draft (at most ``room`` tokens: the cloud adds one per round)."""
        with spent(outcome.timings, DECISION):
            k = min(self.draft_length.choose(), room)
        outcome.decision.draft_length = max(k, 0)
        if k <= 0:
            return [], []
        started = time.perf_counter()
        reply = await tiers.draft(edge_pb2.DraftRequest(
            session_id=session, tokens=tokens, num_tokens=k, sampling=request.sampling.to_pb(),
            tenant=request.tenant, return_distributions=not request.sampling.greedy),
            request.deadline, outcome.timings)
        with spent(outcome.timings, DECISION):
            self.draft_length.observe_draft(time.perf_counter() - started, len(reply.tokens),
                                            reply.computed_tokens)
        outcome.usage.draft_tokens += len(reply.tokens)
        outcome.usage.edge_generated_tokens += len(reply.tokens)
        return list(reply.tokens), list(reply.distributions)

    async def _verify(self, tiers: Tiers, request: RoutedRequest, session: str,
                      tokens: list[int], draft: list[int],
                      distributions: list[common_pb2.TokenDistribution],
                      outcome: Outcome) -> tuple[list[int], int]:
        """One cloud pass over ``draft``; returns (accepted drafts, the cloud's next token)."""
        started = time.perf_counter()
        verdict = await tiers.verify(cloud_pb2.VerifyRequest(
            session_id=session, tokens=tokens, draft_tokens=draft,
            sampling=request.sampling.to_pb(), tenant=request.tenant,
            draft_distributions=distributions), request.deadline, outcome.timings)
        with spent(outcome.timings, DECISION):
            self.draft_length.observe_verify(time.perf_counter() - started,
                                             verdict.timings.total_ns / 1e9, len(draft),
                                             verdict.accepted, verdict.computed_tokens)
        outcome.usage.cloud_forward_passes += 1
        outcome.usage.accepted_draft_tokens += verdict.accepted
        return draft[:verdict.accepted], verdict.next_token

    async def _finish_on_cloud(self, request: RoutedRequest, tiers: Tiers, outcome: Outcome,
                               tokens: list[int], emitter: Emitter) -> AsyncIterator[Chunk]:
        """Stream the rest from the cloud alone (same prefix, so the same output)."""
        continuation = request.tier_request(prompt_ids=tokens, max_tokens=emitter.remaining)
        async for chunk in tiers.cloud_stream(continuation, request.deadline, outcome.timings):
            # One pass per streamed token (the first is the continuation's prefill); the
            # stream may be cut at max_tokens before its final chunk reports a count.
            outcome.usage.cloud_forward_passes += len(chunk.token_ids)
            piece = emitter.push(common_pb2.TIER_CLOUD, chunk.token_ids)
            if piece:
                yield piece
            if chunk.finish_reason and not emitter.done:  # the cloud ended it (EOS / stop)
                emitter.finish(chunk.finish_reason)
            if emitter.done:
                return
