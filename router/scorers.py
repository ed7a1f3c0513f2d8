"""Scorers estimate P(an edge answer is acceptable) for the cascade."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_token_probability(logprobs: Sequence[float]) -> float:
    """Geometric mean of the answer's token probabilities, in [0, 1] (0 for no tokens).

    The edge's own confidence: low when it hesitated over many tokens.
    """
    if not logprobs:
        return 0.0
    return math.exp(sum(logprobs) / len(logprobs))
