"""Bounded KV memory for long conversations on the device: H2O (Zhang et al., "H2O:
Heavy-Hitter Oracle for Efficient Generative Inference of LLMs", 2023).

The cache keeps a recent window plus the "heavy hitters" — the older tokens that have
received the most attention so far (attention mass accumulated over every query, summed
over the query heads that share a KV head) — and evicts the rest, per layer and KV head.
The ``recent`` method is the baseline: the most recent tokens only, as many as the budget.

The budget is a token count (a fixed memory, what a device needs) or a fraction of the
tokens seen so far (H2O's evaluation: at every step the cache holds that share of the
sequence). Keys are cached after RoPE, so a kept key keeps its position; the runtime
tracks positions and cache slots separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads after the service sets OpenMP's wait policy (config checks
    import torch   # this module's options first)

METHODS = ("h2o", "recent")


@dataclass(frozen=True)
class KVEviction:
    """``budget``: tokens (an int >= 1) or a fraction of the tokens seen (a float in (0, 1]);
    ``recent``: the recent window, tokens (int) or a share of the budget (float in [0, 1])."""

    budget: int | float
    recent: int | float = 0.5
    method: str = "h2o"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown KV eviction method {self.method!r}; known: {METHODS}")
        if isinstance(self.budget, float) and not 0.0 < self.budget <= 1.0:
            raise ValueError(f"a fractional KV budget must be in (0, 1], got {self.budget}")
        if isinstance(self.budget, int) and self.budget < 1:
            raise ValueError(f"a KV budget must be at least one token, got {self.budget}")
        if isinstance(self.recent, float) and not 0.0 <= self.recent <= 1.0:
            raise ValueError(f"a recent window given as a share must be in [0, 1], got "
                             f"{self.recent}")
        if isinstance(self.recent, int) and self.recent < 0:
            raise ValueError(f"the recent window must be >= 0 tokens, got {self.recent}")
        if isinstance(self.budget, int) and isinstance(self.recent, int) \
                and self.budget < self.recent:
            raise ValueError(f"the KV budget ({self.budget} tokens) is below the recent "
                             f"window ({self.recent} tokens)")

    def tokens(self, seen: int) -> int:
        """The cache size allowed after ``seen`` tokens."""
        if isinstance(self.budget, float):
            return max(1, math.ceil(self.budget * seen))
        return self.budget

    def window(self, budget: int) -> int:
        """The recent window within a cache of ``budget`` tokens."""
        if self.method == "recent":
            return budget
        if isinstance(self.recent, float):
            return min(budget, round(self.recent * budget))
        return min(budget, self.recent)

    def keep(self, mass: torch.Tensor, budget: int) -> torch.Tensor:
        """Slots to keep, ascending, per (layer, KV head): ``mass`` [L, Hkv, S] is the
        attention each cached slot received; returns [L, Hkv, budget] indices."""
        slots = mass.shape[-1]
        window = self.window(budget)
        score = mass.clone()
        score[..., slots - window:] = math.inf  # the recent window always stays
        return score.topk(budget, dim=-1).indices.sort(dim=-1).values


def parse_kv_budget(text: str) -> int | float:
    """A CLI budget: "512" (tokens) or "0.5" (a fraction of the tokens seen)."""
    value = float(text)
    return int(value) if value >= 1 and value == int(value) and "." not in text else value
