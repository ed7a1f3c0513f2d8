"""The cascade threshold: fixed, or steered online so that the fleet's escalation rate
tracks a target (the cloud budget).

The budget controller is stochastic approximation of a quantile: after every decision
the shared threshold moves by step * (target - escalated). Escalating more often than the
target lowers the threshold, less often raises it; at equilibrium P(escalate) = target.
All replicas nudge the same Redis value, so they steer together.
"""

from __future__ import annotations

from tandem.router.state import StateStore


class ThresholdController:
    def __init__(self, state: StateStore, initial: float, target_rate: float = 0.0,
                 step: float = 0.01) -> None:
        self.state = state
        self.initial = initial
        self.target_rate = target_rate
        self.step = step

    @property
    def adaptive(self) -> bool:
        return self.target_rate > 0.0

    async def current(self) -> float:
        if not self.adaptive:
            return self.initial
        return await self.state.threshold(self.initial)

    async def observe(self, escalated: bool) -> None:
        """Record one decision (moves the shared threshold when adaptive)."""
        if self.adaptive:
            await self.state.nudge_threshold(self.step * (self.target_rate - float(escalated)),
                                             self.initial)
