"""Load-aware routing shared by the policies: a request goes where it can be served in
time. When the edge would make it wait longer than the budget (or refuses it: its queue is
full), the cloud answers instead; when the cloud refuses an escalation before streaming
anything, or is down or out of time, an edge answer that exists is kept. Either way the
decision says so (``spilled``, ``spill_reason``) and the router counts it by reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

from tandem.router.policies.base import Outcome, RoutedRequest, stream_from_tier
from tandem.shared.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from tandem.shared.segments import Segment
from tandem.v1 import common_pb2

if TYPE_CHECKING:
    from tandem.router.tiers import Tiers

EDGE_BUSY = "edge_busy"  # estimated edge wait over the budget, or its queue full
EDGE_REFUSED = "edge_refused"  # the edge answered RESOURCE_EXHAUSTED
EDGE_SLOW_DRAFT = "edge_slow_draft"  # speculative: decoded on the cloud alone
CLOUD_FULL = "cloud_full"  # the escalation was refused; the edge answer was kept
# The cloud was unreachable or did not answer in time; the edge answer was kept.
CLOUD_UNAVAILABLE = "cloud_unavailable"


def spill(outcome: Outcome, reason: str) -> None:
    outcome.decision.spilled = True
    outcome.decision.spill_reason = reason


def unspill(outcome: Outcome) -> None:
    """The spill did not happen after all (the request stayed where it was)."""
    outcome.decision.spilled = False
    outcome.decision.spill_reason = ""
    outcome.decision.speculation_abandoned = False


def edge_too_busy(tiers: Tiers, budget_s: float) -> bool:
    """Whether the edge would refuse a request or make it wait longer than ``budget_s``
    (from its latest Load; an unknown load counts as not busy) while the cloud could take
    it instead: a cloud whose load is unknown is down or too busy to answer Load, and
    the edge's queue beats an error."""
    load, cloud = tiers.edge_load(), tiers.cloud_load()  # both: a first read starts polling
    return (load is not None and cloud is not None
            and (load.queued >= load.max_queued or load.estimated_wait_ms > budget_s * 1e3))


async def edge_or_cloud(tiers: Tiers, request: RoutedRequest, outcome: Outcome,
                        budget_s: float) -> AsyncIterator[Segment]:
    """The edge's streamed answer, or the cloud's when the edge is too busy or refuses
    the request before streaming anything."""
    if edge_too_busy(tiers, budget_s):
        spill(outcome, EDGE_BUSY)
    else:
        streamed = False
        try:
            async with aclosing(stream_from_tier(tiers, common_pb2.TIER_EDGE, request,
                                                 outcome)) as edge:
                async for piece in edge:
                    streamed = True
                    yield piece
            return
        except ResourceExhausted:
            if streamed:
                raise
            spill(outcome, EDGE_REFUSED)
    async with aclosing(stream_from_tier(tiers, common_pb2.TIER_CLOUD, request,
                                         outcome)) as cloud:
        async for piece in cloud:
            yield piece


async def or_keep_edge_answer(escalation: AsyncIterator[Segment], outcome: Outcome,
                              edge: common_pb2.TierGenerateResponse) -> AsyncIterator[Segment]:
    """An escalation's stream, or the edge answer it would replace when the cloud refuses
    it (RESOURCE_EXHAUSTED), is down (UNAVAILABLE) or runs out of time (DEADLINE_EXCEEDED:
    the tier calls keep a margin of the request's deadline for this answer) before
    streaming anything. The escalation's own writes are gone with it; speculation never
    streams a token the cloud has not verified, so nothing unverified was sent."""
    streamed = False
    try:
        async with aclosing(escalation):
            async for piece in escalation:
                streamed = True
                yield piece
        return
    except (ResourceExhausted, Unavailable, DeadlineExceeded) as exc:
        if streamed:
            raise
        reason = CLOUD_FULL if isinstance(exc, ResourceExhausted) else CLOUD_UNAVAILABLE
    spill(outcome, reason)
    outcome.decision.escalated = False
    outcome.usage.edge_tokens += len(edge.token_ids)
    outcome.finish_reason = edge.finish_reason
    yield Segment(common_pb2.TIER_EDGE, edge.text, tuple(edge.token_ids))


async def or_edge_answer(cloud: AsyncIterator[Segment], tiers: Tiers, request: RoutedRequest,
                         outcome: Outcome) -> AsyncIterator[Segment]:
    """A cloud-first stream (a policy that judged the request too hard for the edge), or
    the edge's own answer when the cloud is down (UNAVAILABLE) or refuses it
    (RESOURCE_EXHAUSTED: overload) before streaming anything: a degraded answer, labelled
    ``cloud_unavailable`` or ``cloud_full``, beats an error for auto."""
    streamed = False
    try:
        async with aclosing(cloud):
            async for piece in cloud:
                streamed = True
                yield piece
        return
    except (Unavailable, ResourceExhausted) as exc:
        if streamed:
            raise
        reason = CLOUD_FULL if isinstance(exc, ResourceExhausted) else CLOUD_UNAVAILABLE
    spill(outcome, reason)
    outcome.decision.escalated = False
    async with aclosing(stream_from_tier(tiers, common_pb2.TIER_EDGE, request,
                                         outcome)) as edge:
        async for piece in edge:
            yield piece
