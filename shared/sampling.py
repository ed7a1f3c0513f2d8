"""Sampling parameters and a per-request token sampler over a logits vector.

Both tiers use this sampler so that the same parameters mean the same thing everywhere.
Log-probabilities are always those of the raw model distribution (temperature 1), as in
vLLM, so confidence scores do not depend on how a request was sampled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tandem.shared.errors import InvalidArgument
from tandem.v1 import common_pb2

MAX_STOP_STRINGS = 8
MAX_STOP_LENGTH = 128
# Past ~100 the distribution is uniform for any model; larger values are mistakes.
MAX_TEMPERATURE = 100.0
# Below 0.01, dividing a logit by the penalty overflows float32 (1e-40 gave inf, then
# NaN probabilities that failed every request batched with it).
MIN_REPETITION_PENALTY = 0.01
MAX_REPETITION_PENALTY = 10.0


@dataclass(frozen=True)
class SamplingParams:
    """Validated sampling parameters (see common.proto SamplingParams)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

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
        if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
            raise InvalidArgument(
                f"temperature: must be in [0, {MAX_TEMPERATURE:g}], got {temperature}")
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
        if not (math.isfinite(pb.min_p) and 0.0 <= pb.min_p <= 1.0):
            raise InvalidArgument(f"min_p: must be in [0, 1], got {pb.min_p}")
        repetition = pb.repetition_penalty if pb.HasField("repetition_penalty") else 1.0
        if not (math.isfinite(repetition)
                and MIN_REPETITION_PENALTY <= repetition <= MAX_REPETITION_PENALTY):
            raise InvalidArgument(
                f"repetition_penalty: must be in [{MIN_REPETITION_PENALTY:g}, "
                f"{MAX_REPETITION_PENALTY:g}], got {repetition}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(pb, name)
            if not (math.isfinite(value) and -2.0 <= value <= 2.0):
                raise InvalidArgument(f"{name}: must be in [-2, 2], got {value}")
        return cls(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                   top_k=pb.top_k, stop=stop, seed=seed, min_p=pb.min_p,
                   repetition_penalty=repetition, presence_penalty=pb.presence_penalty,
                   frequency_penalty=pb.frequency_penalty)

    def to_pb(self) -> common_pb2.SamplingParams:
        pb = common_pb2.SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature,
                                       top_p=self.top_p, top_k=self.top_k, stop=list(self.stop))
        if self.seed is not None:
            pb.seed = self.seed
        pb.min_p = self.min_p
        if self.repetition_penalty != 1.0:
            pb.repetition_penalty = self.repetition_penalty
        pb.presence_penalty = self.presence_penalty
        pb.frequency_penalty = self.frequency_penalty
        return pb


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def entropy(logprobs: np.ndarray) -> float:
    """Entropy in nats of a distribution given as log-probabilities [V]."""
    return float(-(np.exp(logprobs) * logprobs).sum())


class TokenSampler:
    """Chooses tokens for one request; seeded, so a seed reproduces the output.

    Penalties follow vLLM: repetition over prompt and output tokens, presence and
    frequency over output tokens. The sampler counts the tokens it samples itself; the
    prompt's tokens count for the repetition penalty once ``set_prompt`` is called.
    """

    def __init__(self, params: SamplingParams, report_entropy: bool = False) -> None:
        self.params = params
        # Whether backends should report each token's entropy (costs one pass over V).
        self.report_entropy = report_entropy
        self.rng = np.random.default_rng(params.seed)  # also drives rejection sampling
        self._prompt_ids: np.ndarray = np.zeros(0, dtype=np.int64)
        self._output_counts: dict[int, int] = {}

    def set_prompt(self, prompt_ids: Sequence[int]) -> None:
        self._prompt_ids = np.unique(np.asarray(prompt_ids, dtype=np.int64))

    def apply_penalties(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` with the request's penalties applied (unchanged when there are none)."""
        p = self.params
        if not p.has_penalties:
            return logits
        out = logits.astype(np.float32, copy=True)
        output_ids = np.fromiter(self._output_counts, dtype=np.int64)
        if p.repetition_penalty != 1.0:
            seen = np.union1d(self._prompt_ids, output_ids)
            values = out[seen]
            out[seen] = np.where(values > 0, values / p.repetition_penalty,
                                 values * p.repetition_penalty)
        if output_ids.size:
            counts = np.fromiter(self._output_counts.values(), dtype=np.float32)
            out[output_ids] -= p.presence_penalty + p.frequency_penalty * counts
        return out

    def _record(self, token: int) -> None:
        self._output_counts[token] = self._output_counts.get(token, 0) + 1

    def distribution(self, logits: np.ndarray) -> np.ndarray:
        """The probabilities this request samples from (temperature, top-k, top-p applied)."""
        p = self.params
        # Shifted by the maximum before dividing: a tiny temperature cannot overflow.
        shifted = logits.astype(np.float64)
        scaled = (shifted - shifted.max()) / p.temperature
        if 0 < p.top_k < scaled.shape[-1]:
            kth = np.partition(scaled, -p.top_k)[-p.top_k]
            scaled = np.where(scaled < kth, -np.inf, scaled)
        probs = np.exp(scaled)
        total = probs.sum()
        if not (math.isfinite(total) and total > 0):
            raise InvalidArgument("sampling: these parameters give no valid distribution over "
                                  "the model's logits")
        probs /= total
        if p.min_p > 0.0:
            probs = np.where(probs < p.min_p * probs.max(), 0.0, probs)
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
        token, raw, prob, _ = self._choose(logits)
        return token, float(raw[token]), prob

    def sample_with_distribution(self, logits: np.ndarray
                                 ) -> tuple[int, float, float, np.ndarray | None]:
        """As ``sample``, plus the distribution sampled from (None when greedy)."""
        token, raw, prob, probs = self._choose(logits)
        return token, float(raw[token]), prob, probs

    def sample_with_entropy(self, logits: np.ndarray) -> tuple[int, float, float]:
        """(token, raw log-probability, entropy of the raw distribution); the entropy is
        0.0 unless the request asked for it (``report_entropy``)."""
        token, raw, _, _ = self._choose(logits)
        return token, float(raw[token]), entropy(raw) if self.report_entropy else 0.0

    def _choose(self, logits: np.ndarray) -> tuple[int, np.ndarray, float, np.ndarray | None]:
        """(token, raw log-probabilities [V], its probability under the sampling
        distribution, that distribution or None when greedy)."""
        raw = log_softmax(logits.astype(np.float32))
        logits = self.apply_penalties(logits)
        if self.params.greedy:
            token = int(np.argmax(logits))
            self._record(token)
            return token, raw, float(math.exp(raw[token])), None
        probs = self.distribution(logits)
        token = int(self.rng.choice(probs.shape[-1], p=probs))
        self._record(token)
        return token, raw, float(probs[token]), probs
