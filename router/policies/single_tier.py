"""`edge` and `cloud`: one tier answers, streamed straight through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, ClassVar

from tandem.router.policies.base import (Chunk, Outcome, Policy, RoutedRequest, add_tier_chunk,
                                         register_policy)
from tandem.v1 import common_pb2

if TYPE_CHECKING:
    from tandem.router.tiers import Tiers


class SingleTierPolicy(Policy):
    tier: ClassVar[int]

    async def run(self, request: RoutedRequest, tiers: Tiers,
                  outcome: Outcome) -> AsyncIterator[Chunk]:
        stream = tiers.edge_stream if self.tier == common_pb2.TIER_EDGE else tiers.cloud_stream
        async for chunk in stream(request.tier_request(), request.deadline, outcome.timings):
            piece = add_tier_chunk(outcome, chunk, self.tier)
            if piece:
                yield piece


@register_policy
class EdgePolicy(SingleTierPolicy):
    """Only the on-device model answers (cheapest, lowest quality)."""

    name = "edge"
    tier = common_pb2.TIER_EDGE


@register_policy
class CloudPolicy(SingleTierPolicy):
    """Only the cloud model answers (the quality reference)."""

    name = "cloud"
    tier = common_pb2.TIER_CLOUD
