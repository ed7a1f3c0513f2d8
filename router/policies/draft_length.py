"""Choosing the speculative draft length from what is measured.

With per-token acceptance α, draft length γ, draft/target step-cost ratio c and round
trip ρ (in target-step units), a round yields E = (1 − α^(γ+1)) / (1 − α) tokens and
costs 1 + γc + ρ target steps, so the speed-up over the cloud alone is
E / (1 + γc + ρ). We keep running estimates of α, c and ρ (shared by all requests of
this router), pick the γ that maximises it, and abandon speculation for the rest of a
request when even the best γ is predicted slower than the cloud alone.
"""

from __future__ import annotations

import time

MAX_DRAFT = 16
# Exponential moving average weight of a new observation.
EMA = 0.1
# Keep speculating unless predicted clearly slower (estimates are noisy).
ABANDON_BELOW = 0.9
# Abandoning stops the measurements that justified it; after this long without a round,
# speculate again to re-measure (load and links change).
REPROBE_AFTER_S = 5.0


def expected_tokens(alpha: float, gamma: int) -> float:
    if alpha >= 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def predicted_speedup(alpha: float, gamma: int, cost_ratio: float, rtt_steps: float) -> float:
    return expected_tokens(alpha, gamma) / (1.0 + gamma * cost_ratio + rtt_steps)


class DraftLengthController:
    def __init__(self, initial: int, adaptive: bool = True) -> None:
        self.initial = initial
        self.adaptive = adaptive
        # Optimistic priors until measured: high acceptance, cheap drafts, no RTT.
        self.alpha = 0.8
        self.draft_s_per_token: float | None = None
        self.target_step_s: float | None = None
        self.rtt_s = 0.0
        self._accepted: float | None = None  # EMA of accepted drafts per round
        self._trials: float | None = None  # EMA of accepted + rejected drafts per round
        self._observations = 0
        self._last_round = 0.0

    def _ratios(self) -> tuple[float, float]:
        if not self.draft_s_per_token or not self.target_step_s:
            return 0.1, 0.0
        return self.draft_s_per_token / self.target_step_s, self.rtt_s / self.target_step_s

    def choose(self) -> int:
        if not self.adaptive or self._observations < 3:
            return self.initial
        c, rho = self._ratios()
        return max(range(1, MAX_DRAFT + 1),
                   key=lambda g: predicted_speedup(self.alpha, g, c, rho))

    def should_abandon(self) -> bool:
        if not self.adaptive or self._observations < 3:
            return False
        if time.monotonic() - self._last_round > REPROBE_AFTER_S:
            return False
        c, rho = self._ratios()
        gamma = self.choose()
        return predicted_speedup(self.alpha, gamma, c, rho) < ABANDON_BELOW

    def observe_draft(self, seconds: float, drafted: int) -> None:
        if drafted:
            self.draft_s_per_token = _ema(self.draft_s_per_token, seconds / drafted)

    def observe_verify(self, wall_s: float, cloud_s: float, drafted: int, accepted: int) -> None:
        """One verify round: its wall time, the cloud's own compute time, and the outcome."""
        self.target_step_s = _ema(self.target_step_s, cloud_s)
        self.rtt_s = _ema(self.rtt_s, max(wall_s - cloud_s, 0.0)) or 0.0
        if drafted:
            # Each round is a geometric trial censored at `drafted`: successes until the
            # first rejection. α = successes / (successes + failures), smoothed.
            self._accepted = _ema(self._accepted, accepted)
            self._trials = _ema(self._trials, accepted + (0 if accepted == drafted else 1))
            if self._trials:
                self.alpha = min(self._accepted / self._trials, 0.99)
        self._observations += 1
        self._last_round = time.monotonic()


def _ema(previous: float | None, value: float) -> float:
    return value if previous is None else (1 - EMA) * previous + EMA * value
