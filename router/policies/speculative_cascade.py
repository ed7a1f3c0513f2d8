"""`speculative-cascade`: token-level deferral (Narasimhan et al., "Faster Cascades via
Speculative Decoding", 2024). The edge drafts and the cloud verifies, as in `speculative`,
but with a lenient rule: an edge token is kept where the cloud gives it at least
``deferral_leniency`` x the probability of its own top token, and the cloud takes over only
from the first token it would not accept. A partly good edge answer is partly kept, in
fewer cloud passes; the output is no longer exactly the cloud's (leniency 1 is: lossless).

Greedy decoding only: a sampled request is refused (INVALID_ARGUMENT) before any tier work
rather than decoded under another rule than the one asked for.

The leniency τ is fixed, or steered online to a cloud budget (``target_cloud_pass_share``:
the cloud's forward passes per output token, across the fleet) by the same budget
controller as the cascade's threshold (router/controller.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tandem.router.controller import ThresholdController
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
    # The least leniency the controller hands out (the cloud reads 0 as "lossless").
    MIN_LENIENCY = 0.01

    @classmethod
    def from_config(cls, config: RouterConfig,
                    resources: PolicyResources) -> SpeculativeCascadePolicy:
        policy = super().from_config(config, resources)
        assert isinstance(policy, SpeculativeCascadePolicy)
        policy.leniency = ThresholdController(
            resources.state, config.deferral_leniency, config.target_cloud_pass_share,
            config.controller_step, name="leniency", floor=cls.MIN_LENIENCY)
        return policy

    def run(self, request: RoutedRequest, tiers: Tiers, outcome: Outcome) -> AsyncIterator[Segment]:
        if not request.sampling.greedy:
            raise InvalidArgument("policy speculative-cascade: token-level deferral needs "
                                  "greedy decoding (temperature 0)")
        return self._deferred(request, tiers, outcome)

    async def _deferred(self, request: RoutedRequest, tiers: Tiers,
                        outcome: Outcome) -> AsyncIterator[Segment]:
        leniency = await self.leniency.current()
        outcome.decision.threshold = leniency
        async for chunk in self.decode(request, tiers, outcome, leniency=leniency):
            yield chunk
        if self.leniency.adaptive:
            usage = outcome.usage
            output = usage.edge_tokens + usage.cloud_tokens
            if output:
                outcome.start_state_write(self.leniency.observe(
                    min(1.0, usage.cloud_forward_passes / output)))
