"""`edge` and `cloud`: one tier answers, streamed straight through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, ClassVar

from tandem.router.policies.base import (Outcome, Policy, RoutedRequest, register_policy,
                                         stream_from_tier)
from tandem.shared.segments import Segment
from tandem.v1 import common_pb2

if TYPE_CHECKING:
    from tandem.router.tiers import Tiers


class SingleTierPolicy(Policy):
    tier: ClassVar[int]

    def run(self, request: RoutedRequest, tiers: Tiers, outcome: Outcome) -> AsyncIterator[Segment]:
        return stream_from_tier(tiers, self.tier, request, outcome)


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
