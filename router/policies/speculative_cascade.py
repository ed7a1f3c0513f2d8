"""`speculative-cascade`: token-level deferral (Narasimhan et al., "Faster Cascades via
Speculative Decoding", 2024). The edge drafts and the cloud verifies, as in `speculative`,
but with a lenient rule: an edge token is kept where the cloud gives it at least
``deferral_leniency`` x the probability of its own top token, and the cloud takes over only
from the first token it would not accept. A partly good edge answer is partly kept, in
fewer cloud passes; the output is no longer exactly the cloud's (leniency 1 is: lossless).

Greedy decoding only: a sampled request is refused (INVALID_ARGUMENT) before any tier work
rather than decoded under another rule than the one asked for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tandem.router.policies.base import Outcome, PolicyResources, RoutedRequest, register_policy
from tandem.router.policies.speculative import SpeculativePolicy
from tandem.shared.errors import InvalidArgument
from tandem.shared.segments import Segment

if TYPE_CHECKING:
    from tandem.router.config import RouterConfig
    from tandem.router.tiers import Tiers


@register_policy
class SpeculativeCascadePolicy(SpeculativePolicy):
    name = "speculative-cascade"

    @classmethod
    def from_config(cls, config: RouterConfig,
                    resources: PolicyResources) -> SpeculativeCascadePolicy:
        policy = super().from_config(config, resources)
        assert isinstance(policy, SpeculativeCascadePolicy)
        policy.leniency = config.deferral_leniency
        return policy

    def run(self, request: RoutedRequest, tiers: Tiers, outcome: Outcome) -> AsyncIterator[Segment]:
        if not request.sampling.greedy:
            raise InvalidArgument("policy speculative-cascade: token-level deferral needs "
                                  "greedy decoding (temperature 0)")
        return self.decode(request, tiers, outcome)
