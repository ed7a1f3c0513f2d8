"""`route` (pre-generation routing, RouteLLM-style): predict from the prompt alone
whether the edge will answer acceptably; send it to the edge or straight to the cloud."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

from tandem.router.latency import SCORING, spent
from tandem.router.offload import CoalescedPredictions
from tandem.router.policies.base import (Outcome, Policy, PolicyResources, RoutedRequest,
                                         register_policy, stream_from_tier)
from tandem.router.policies.spill import edge_or_cloud
from tandem.router.scorers import PromptRouter
from tandem.shared.segments import Segment
from tandem.v1 import common_pb2

if TYPE_CHECKING:
    from tandem.router.config import RouterConfig
    from tandem.router.tiers import Tiers


@register_policy
class RoutePolicy(Policy):
    name = "route"

    def __init__(self, router: PromptRouter, threshold: float,
                 edge_wait_budget_s: float = float("inf")) -> None:
        self.router = router
        self.predictions = CoalescedPredictions(router.predict_many)
        self.threshold = threshold
        self.edge_wait_budget_s = edge_wait_budget_s

    @classmethod
    def from_config(cls, config: RouterConfig, resources: PolicyResources) -> RoutePolicy:
        assert resources.prompt_router is not None
        return cls(resources.prompt_router, config.route_threshold,
                   config.edge_wait_budget_ms / 1e3)

    async def predict(self, request: RoutedRequest, outcome: Outcome,
                      threshold: float | None = None) -> bool:
        """True when P(edge suffices) reaches ``threshold`` (default: the route policy's);
        the estimate is recorded in the decision."""
        with spent(outcome.timings, SCORING):  # MiniLM over the prompt, then the head
            p_edge = await self.predictions.predict(request.tenant, request.prompt_text)
        outcome.decision.route_score = p_edge
        return p_edge >= (self.threshold if threshold is None else threshold)

    async def run(self, request: RoutedRequest, tiers: Tiers,
                  outcome: Outcome) -> AsyncIterator[Segment]:
        to_edge = await self.predict(request, outcome)
        outcome.decision.escalated = not to_edge
        chunks = (edge_or_cloud(tiers, request, outcome, self.edge_wait_budget_s) if to_edge
                  else stream_from_tier(tiers, common_pb2.TIER_CLOUD, request, outcome))
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk
