"""Thresholds that are fixed, or steered online so that a measured share tracks a target
(the cloud budget): the cascade's threshold (its escalation rate) and speculative-cascade's
leniency τ (the share of output tokens the cloud spends a forward pass on).

The budget controller is stochastic approximation of a quantile: after every request the
shared value moves by step * (target - observed), where observed is the request's share
(1 or 0 for an escalation; the cloud's passes per output token for deferral). Using the
cloud more often than the target lowers the value (the cascade keeps more edge answers, the
deferral accepts more edge tokens), less often raises it; at equilibrium the mean share is
the target. All replicas nudge the same Redis value, so they steer together.
"""

from __future__ import annotations

from tandem.router.state import StateStore


class ThresholdController:
    def __init__(self, state: StateStore, initial: float, target_rate: float = 0.0,
                 step: float = 0.01, name: str = "threshold", floor: float = 0.0) -> None:
        self.state = state
        self.initial = initial
        self.target_rate = target_rate
        self.step = step
        self.name = name  # the shared value's name in the state store
        self.floor = floor  # the least value handed out (a leniency of 0 would mean "off")

    @property
    def adaptive(self) -> bool:
        return self.target_rate > 0.0

    async def current(self) -> float:
        if not self.adaptive:
            return self.initial
        return max(self.floor, await self.state.threshold(self.initial, self.name))

    async def observe(self, observed: float) -> None:
        """Record one request's share in [0, 1] (moves the shared value when adaptive)."""
        if self.adaptive:
            await self.state.nudge_threshold(self.step * (self.target_rate - float(observed)),
                                             self.initial, self.name)
