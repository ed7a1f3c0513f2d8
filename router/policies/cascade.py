"""`cascade` (FrugalGPT): the edge answers; a scorer judges the answer; below the
threshold the request is escalated to the cloud.

Streaming contract: the edge answer is held until it is scored, so a client never sees
text that is later withdrawn. Accepted, it arrives as edge chunks; escalated, the client
sees only the cloud's streamed answer (the decision says it was escalated).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tandem.router.policies.base import (Chunk, Outcome, Policy, RoutedRequest, register_policy,
                                         stream_from_tier)
from tandem.router.scorers import mean_token_probability
from tandem.v1 import common_pb2

if TYPE_CHECKING:
    from tandem.router.config import RouterConfig
    from tandem.router.tiers import Tiers


@register_policy
class CascadePolicy(Policy):
    name = "cascade"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    @classmethod
    def from_config(cls, config: RouterConfig, tokenizer: object) -> CascadePolicy:
        return cls(config.cascade_threshold)

    async def run(self, request: RoutedRequest, tiers: Tiers,
                  outcome: Outcome) -> AsyncIterator[Chunk]:
        edge = await tiers.edge_generate(request.tier_request(logprobs=True), request.deadline,
                                         outcome.timings)
        score = mean_token_probability(edge.logprobs)
        outcome.decision.score = score
        outcome.decision.threshold = self.threshold
        if score >= self.threshold:
            outcome.usage.edge_tokens += len(edge.token_ids)
            outcome.usage.edge_generated_tokens += len(edge.token_ids)
            outcome.finish_reason = edge.finish_reason
            yield Chunk(common_pb2.TIER_EDGE, edge.text, tuple(edge.token_ids))
            return
        outcome.usage.edge_generated_tokens += len(edge.token_ids)
        outcome.decision.escalated = True
        async for piece in stream_from_tier(tiers, common_pb2.TIER_CLOUD, request, outcome):
            yield piece


@register_policy
class AutoPolicy(CascadePolicy):
    """The default policy; for now the cascade (difficulty routing comes later)."""

    name = "auto"
