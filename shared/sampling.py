"""Sampling parameters and a per-request token sampler over a logits vector.

Both tiers use this sampler so that the same parameters mean the same thing everywhere.
Log-probabilities are always those of the raw model distribution (temperature 1), as in
vLLM, so confidence scores do not depend on how a request was sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tandem.shared.errors import InvalidArgument
from tandem.v1 import common_pb2

MAX_STOP_STRINGS = 8
MAX_STOP_LENGTH = 128


@dataclass(frozen=True)
class SamplingParams:
    """Validated sampling parameters (see common.proto SamplingParams)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_pb(cls, pb: common_pb2.SamplingParams, *, default_max_tokens: int,
                max_tokens_cap: int) -> SamplingParams:
        """Validate a request's parameters; raises InvalidArgument naming the field."""
        max_tokens = pb.max_tokens if pb.HasField("max_tokens") else default_max_tokens
        if max_tokens <= 0:
            raise InvalidArgument(f"max_tokens: must be >= 1, got {max_tokens}")
        if max_tokens > max_tokens_cap:
            raise InvalidArgument(f"max_tokens: {max_tokens} is above the cap of {max_tokens_cap}")
        temperature = pb.temperature if pb.HasField("temperature") else 0.0
        if not math.isfinite(temperature) or temperature < 0:
            raise InvalidArgument(f"temperature: must be a finite number >= 0, got {temperature}")
        top_p = pb.top_p if pb.HasField("top_p") else 1.0
        if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
            raise InvalidArgument(f"top_p: must be in (0, 1], got {top_p}")
        if pb.top_k < 0:
            raise InvalidArgument(f"top_k: must be >= 0, got {pb.top_k}")
        stop = tuple(pb.stop)
        if len(stop) > MAX_STOP_STRINGS:
            raise InvalidArgument(f"stop: at most {MAX_STOP_STRINGS} strings, got {len(stop)}")
        if any(not s or len(s) > MAX_STOP_LENGTH for s in stop):
            raise InvalidArgument(f"stop: strings must have 1-{MAX_STOP_LENGTH} characters")
        seed = pb.seed if pb.HasField("seed") else None
        return cls(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                   top_k=pb.top_k, stop=stop, seed=seed)

    def to_pb(self) -> common_pb2.SamplingParams:
        pb = common_pb2.SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature,
                                       top_p=self.top_p, top_k=self.top_k, stop=list(self.stop))
        if self.seed is not None:
            pb.seed = self.seed
        return pb


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


class TokenSampler:
    """Chooses tokens for one request; seeded, so a seed reproduces the output."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def distribution(self, logits: np.ndarray) -> np.ndarray:
        """The probabilities this request samples from (temperature, top-k, top-p applied)."""
        p = self.params
        scaled = logits.astype(np.float64) / p.temperature
        if 0 < p.top_k < scaled.shape[-1]:
            kth = np.partition(scaled, -p.top_k)[-p.top_k]
            scaled = np.where(scaled < kth, -np.inf, scaled)
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs)
            cumulative = np.cumsum(probs[order])
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            cut = int(np.searchsorted(cumulative, p.top_p)) + 1
            keep = np.zeros_like(probs, dtype=bool)
            keep[order[:cut]] = True
            probs = np.where(keep, probs, 0.0)
            probs /= probs.sum()
        return probs

    def sample(self, logits: np.ndarray) -> tuple[int, float, float]:
        """Returns (token, raw log-probability, probability under the sampling distribution)."""
        token, logprob, prob, _ = self.sample_with_distribution(logits)
        return token, logprob, prob

    def sample_with_distribution(self, logits: np.ndarray
                                 ) -> tuple[int, float, float, np.ndarray | None]:
        """As ``sample``, plus the distribution sampled from (None when greedy)."""
        raw = log_softmax(logits.astype(np.float32))
        if self.params.greedy:
            token = int(np.argmax(logits))
            return token, float(raw[token]), float(math.exp(raw[token])), None
        probs = self.distribution(logits)
        token = int(self._rng.choice(probs.shape[-1], p=probs))
        return token, float(raw[token]), float(probs[token]), probs
