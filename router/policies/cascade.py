"""`cascade` (FrugalGPT): the edge answers; a scorer estimates P(acceptable); below the
threshold the request is escalated to the cloud.

Streaming contract: the edge answer is held until it is scored, so a client never sees
text that is later withdrawn. Accepted, it arrives as edge chunks; escalated, the client
sees only the cloud's streamed answer (the decision says it was escalated).
The threshold is fixed or steered online by the budget controller (router/controller.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from tandem.router.controller import ThresholdController
from tandem.router.latency import DECISION, STATE, scorer_part, spent
from tandem.router.policies.base import (Outcome, Policy, PolicyResources, RoutedRequest,
                                         register_policy, stream_from_tier)
from tandem.router.policies.spill import (CLOUD_FULL, CLOUD_UNAVAILABLE, EDGE_BUSY,
                                          EDGE_REFUSED, edge_too_busy, or_keep_edge_answer,
                                          spill)
from tandem.router.scorers import JUDGED_TOKENS, EdgeAnswer, Scorer
from tandem.shared.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from tandem.shared.segments import Segment
from tandem.v1 import cloud_pb2, common_pb2

if TYPE_CHECKING:
    from tandem.router.config import RouterConfig
    from tandem.router.tiers import Tiers


@register_policy
class CascadePolicy(Policy):
    name = "cascade"

    def __init__(self, scorer: Scorer, controller: ThresholdController,
                 edge_wait_budget_s: float = float("inf")) -> None:
        self.scorer = scorer
        self.controller = controller
        self.edge_wait_budget_s = edge_wait_budget_s

    @classmethod
    def from_config(cls, config: RouterConfig, resources: PolicyResources) -> CascadePolicy:
        return cls(resources.scorer, ThresholdController(
            resources.state, config.cascade_threshold, config.target_escalation_rate,
            config.controller_step), config.edge_wait_budget_ms / 1e3)

    async def edge_answer(self, request: RoutedRequest, tiers: Tiers,
                          outcome: Outcome) -> tuple[common_pb2.TierGenerateResponse, bool]:
        """The edge's answer, scored; returns (answer, accepted) and records the decision.
        The shared threshold is read while the edge generates, and the controller's update
        is written alongside the router's completion write: neither waits on its own."""
        timings = outcome.timings
        with spent(timings, STATE):
            threshold_read = asyncio.ensure_future(self.controller.current())
        try:
            edge = await tiers.edge_generate(request.tier_request(logprobs=True),
                                             request.deadline, timings)
        except BaseException:
            threshold_read.cancel()
            raise
        outcome.usage.edge_generated_tokens += len(edge.token_ids)
        answer = EdgeAnswer(request.prompt_text, edge.text, edge.logprobs, edge.entropies)
        if getattr(self.scorer, "needs_cloud", False):
            try:
                answer = await self._judged(answer, edge, request, tiers, outcome)
            except (ResourceExhausted, Unavailable, DeadlineExceeded) as exc:
                threshold_read.cancel()  # no judge, and no cloud to escalate to: keep it
                spill(outcome, CLOUD_FULL if isinstance(exc, ResourceExhausted)
                      else CLOUD_UNAVAILABLE)
                outcome.usage.edge_tokens += len(edge.token_ids)
                outcome.finish_reason = edge.finish_reason
                return edge, True
        with spent(timings, scorer_part(self.scorer)):
            score = self.scorer.score(answer)
        with spent(timings, STATE):
            threshold = await threshold_read
        with spent(timings, DECISION):
            accepted = score >= threshold
            outcome.decision.score = score
            outcome.decision.threshold = threshold
            outcome.decision.escalated = not accepted
        if self.controller.adaptive:
            outcome.start_state_write(self.controller.observe(not accepted))
        if accepted:
            outcome.usage.edge_tokens += len(edge.token_ids)
            outcome.finish_reason = edge.finish_reason
        return edge, accepted

    @staticmethod
    async def _judged(answer: EdgeAnswer, edge: common_pb2.TierGenerateResponse,
                      request: RoutedRequest, tiers: Tiers, outcome: Outcome) -> EdgeAnswer:
        """``answer`` with the cloud's judgement of its tokens: one Verify pass over them
        (no generation); the session's KV is freed after the reply."""
        if not edge.token_ids:
            return answer
        session = f"judge-{request.request_id}"
        verdict = await tiers.verify(cloud_pb2.VerifyRequest(
            session_id=session, tokens=list(request.prompt_ids),
            draft_tokens=list(edge.token_ids)[:JUDGED_TOKENS], score_draft=True,
            sampling=common_pb2.SamplingParams(max_tokens=1, temperature=0.0),
            tenant=request.tenant), request.deadline, outcome.timings)
        outcome.usage.cloud_forward_passes += 1
        outcome.after_reply.append(partial(tiers.end_session, request.tenant, session))
        return replace(answer, cloud_logprobs=tuple(verdict.draft_logprobs),
                       cloud_ranks=tuple(verdict.draft_ranks))

    async def run(self, request: RoutedRequest, tiers: Tiers,
                  outcome: Outcome) -> AsyncIterator[Segment]:
        edge = await self.edge_answer_or_spill(request, tiers, outcome)
        if edge is None:  # the edge is too busy: the cloud answers
            async with aclosing(stream_from_tier(tiers, common_pb2.TIER_CLOUD, request,
                                                 outcome)) as cloud:
                async for piece in cloud:
                    yield piece
            return
        answer, accepted = edge
        if accepted:
            yield Segment(common_pb2.TIER_EDGE, answer.text, tuple(answer.token_ids))
            return
        escalation = stream_from_tier(tiers, common_pb2.TIER_CLOUD, request, outcome)
        async with aclosing(or_keep_edge_answer(escalation, outcome, answer)) as pieces:
            async for piece in pieces:
                yield piece

    async def edge_answer_or_spill(self, request: RoutedRequest, tiers: Tiers, outcome: Outcome
                                   ) -> tuple[common_pb2.TierGenerateResponse, bool] | None:
        """``edge_answer``, or None (the decision marked spilled) when the edge is too busy
        to answer within the wait budget or refuses the request."""
        if edge_too_busy(tiers, self.edge_wait_budget_s):
            spill(outcome, EDGE_BUSY)
            return None
        try:
            return await self.edge_answer(request, tiers, outcome)
        except ResourceExhausted:
            spill(outcome, EDGE_REFUSED)
            return None
