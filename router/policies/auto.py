"""`auto`, the default: route → (edge answer → score → escalate) → escalations decoded
speculatively.

1. The prompt router predicts whether the edge will suffice; clearly hard prompts (below
   `auto_skip_edge_below`) skip the edge and are decoded speculatively at once.
2. Otherwise the edge answers and the cascade's scorer judges the answer.
3. An escalated answer is not wasted: its tokens are the first draft the cloud verifies,
   so whatever prefix the cloud agrees with costs one pass (lossless: the cloud decides
   every token). Streaming follows the cascade's contract (edge text held until scored).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

from tandem.router.policies.base import (Outcome, Policy, PolicyResources, RoutedRequest,
                                         register_policy, stream_from_tier)
from tandem.router.policies.cascade import CascadePolicy
from tandem.router.policies.route import RoutePolicy
from tandem.router.policies.speculative import SpeculativePolicy
from tandem.router.policies.spill import (EDGE_BUSY, edge_too_busy, or_edge_answer,
                                          or_keep_edge_answer, spill)
from tandem.shared.segments import Segment
from tandem.v1 import common_pb2

if TYPE_CHECKING:
    from tandem.router.config import RouterConfig
    from tandem.router.tiers import Tiers


@register_policy
class AutoPolicy(Policy):
    name = "auto"

    def __init__(self, max_first_draft: int, skip_edge_below: float) -> None:
        self.max_first_draft = max_first_draft
        self.skip_edge_below = skip_edge_below
        self.cascade: CascadePolicy | None = None
        self.route: RoutePolicy | None = None
        self.speculative: SpeculativePolicy | None = None

    @classmethod
    def from_config(cls, config: RouterConfig, resources: PolicyResources) -> AutoPolicy:
        return cls(config.max_first_draft, config.auto_skip_edge_below)

    def bind(self, policies: dict[str, Policy]) -> None:
        self.cascade = policies["cascade"]  # type: ignore[assignment]
        self.route = policies.get("route")  # type: ignore[assignment]
        self.speculative = policies["speculative"]  # type: ignore[assignment]

    async def run(self, request: RoutedRequest, tiers: Tiers,
                  outcome: Outcome) -> AsyncIterator[Segment]:
        assert self.cascade is not None and self.speculative is not None
        if edge_too_busy(tiers, self.cascade.edge_wait_budget_s):
            # Both branches below would decode on the cloud alone (no edge answer, no
            # drafts): the prompt router's encoder would be model work for nothing, and
            # under overload it delayed the cloud's refusals by ~0.1 s at p99.
            spill(outcome, EDGE_BUSY)
            edge = None
        elif self.route is not None and not await self.route.predict(request, outcome,
                                                                     self.skip_edge_below):
            outcome.decision.escalated = True
            cloud_first = self.speculative.decode(request, tiers, outcome)
            async with aclosing(or_edge_answer(cloud_first, tiers, request, outcome)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        else:
            edge = await self.cascade.edge_answer_or_spill(request, tiers, outcome)
        if edge is None:  # the edge is too busy: the cloud answers alone
            async with aclosing(stream_from_tier(tiers, common_pb2.TIER_CLOUD, request,
                                                 outcome)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        answer, accepted = edge
        if accepted:
            yield Segment(common_pb2.TIER_EDGE, answer.text, tuple(answer.token_ids))
            return
        first_draft = list(answer.token_ids)[:self.max_first_draft] or None
        # aclosing: closing this reply closes the speculative rounds at once (see core.py)
        escalation = self.speculative.decode(request, tiers, outcome, first_draft)
        async with aclosing(or_keep_edge_answer(escalation, outcome, answer)) as chunks:
            async for chunk in chunks:
                yield chunk
