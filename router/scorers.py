"""Scorers estimate P(an edge answer is acceptable) for the cascade; routers estimate it
from the prompt alone, before generation. Both sit behind small registries.

- ``mean_prob`` / ``min_prob``: the edge's own confidence (geometric-mean / minimum token
  probability of its answer).
- ``learned``: all-MiniLM-L6-v2 embeddings of (query, answer) plus the confidence features,
  into a logistic head trained by `tandem eval train-scorer` on labelled answers.
- ``cloud_mean_prob`` / ``cloud_min_prob`` / ``cloud_top1_share``: the cloud's judgement
  of the answer (one Verify pass with ``score_draft``, no generation): its geometric-mean
  and minimum probability of the answer's tokens, and the share of them it would have
  picked itself. The cascade asks the cloud for it before deciding (``needs_cloud``).
- ``cloud_combined``: those judgements, the edge's own confidence and the agreed prefix
  (the answer tokens before the first one the cloud would not pick itself) into a
  logistic head trained by `tandem eval train-scorer` on judged labels.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

import numpy as np

from tandem.router.head import LogisticHead

DATA = Path(__file__).parent / "data"
DEFAULT_CASCADE_HEAD = DATA / "cascade_head.npz"
DEFAULT_ROUTE_HEAD = DATA / "route_head.npz"
DEFAULT_JUDGE_HEAD = DATA / "judge_head.npz"


@dataclass(frozen=True)
class EdgeAnswer:
    prompt: str
    text: str
    logprobs: Sequence[float]
    entropies: Sequence[float] = ()  # nats, per token (empty when the edge sent none)
    # The cloud's judgement of each answer token (cloud-judged scorers only).
    cloud_logprobs: Sequence[float] = ()
    cloud_ranks: Sequence[int] = ()


# Most answer tokens the cloud judges in one Verify (its draft limit).
JUDGED_TOKENS = 64

# An answer without a signal counts as unconfident: a log-probability of -10, and the
# entropy of a uniform choice over e^5 tokens.
NO_LOGPROB, NO_ENTROPY = -10.0, 5.0


def confidence_features(answers: Sequence[EdgeAnswer]) -> np.ndarray:
    """[N, 5]: mean and minimum token log-probability, answer length (tokens / 32), mean
    and maximum token entropy."""
    rows = [(float(np.mean(a.logprobs)) if a.logprobs else NO_LOGPROB,
             float(np.min(a.logprobs)) if a.logprobs else NO_LOGPROB,
             len(a.logprobs) / 32.0,
             float(np.mean(a.entropies)) if a.entropies else NO_ENTROPY,
             float(np.max(a.entropies)) if a.entropies else NO_ENTROPY) for a in answers]
    return np.asarray(rows, dtype=np.float32).reshape(len(answers), 5)


def agreed_prefix(ranks: Sequence[int]) -> int:
    """How many answer tokens come before the first one the cloud would not pick itself:
    so far the answer is the cloud's own greedy answer, word for word."""
    return next((i for i, rank in enumerate(ranks) if rank != 0), len(ranks))


# A token "within the cloud's top k" for the top-k share.
TOP_K = 5


def judge_features(answers: Sequence[EdgeAnswer]) -> np.ndarray:
    """[N, 9]: mean and min cloud log-prob, top-1 and top-k share, edge mean and min
    log-prob, answer length / 32, the agreed prefix / 10 and as a share of the answer."""
    rows = []
    for a in answers:
        cloud, ranks, edge = a.cloud_logprobs or [0.0], a.cloud_ranks or [0], a.logprobs or [0.0]
        agreed = agreed_prefix(a.cloud_ranks)
        rows.append([float(np.mean(cloud)), float(np.min(cloud)),
                     float(np.mean([r == 0 for r in ranks])),
                     float(np.mean([r < TOP_K for r in ranks])),
                     float(np.mean(edge)), float(np.min(edge)), len(a.cloud_ranks) / 32.0,
                     agreed / 10.0, agreed / max(len(a.cloud_ranks), 1)])
    return np.asarray(rows, dtype=np.float64).reshape(len(answers), 9)


def answer_features(encoder: object, answers: Sequence[EdgeAnswer]) -> np.ndarray:
    """[N, 384 + 384 + 1 + 5]: MiniLM(query), MiniLM(answer), their cosine, confidence."""
    q = encoder.encode([a.prompt for a in answers])  # type: ignore[attr-defined]
    a = encoder.encode([a.text for a in answers])  # type: ignore[attr-defined]
    cos = (q * a).sum(axis=1, keepdims=True)
    return np.hstack([q, a, cos, confidence_features(answers)])


def prompt_features(encoder: object, prompts: Sequence[str]) -> np.ndarray:
    """[N, 384 + 1]: MiniLM(prompt) and log prompt length in characters."""
    lengths = np.asarray([[math.log1p(len(p))] for p in prompts], dtype=np.float32)
    return np.hstack([encoder.encode(list(prompts)), lengths])  # type: ignore[attr-defined]


class Scorer(ABC):
    name: ClassVar[str]

    @abstractmethod
    def score_many(self, answers: Sequence[EdgeAnswer]) -> np.ndarray:
        """P(acceptable) for each answer, [N]."""

    def score(self, answer: EdgeAnswer) -> float:
        return float(self.score_many([answer])[0])


class ConfidenceScorer(Scorer):
    """A statistic of the edge's own token signals, computed per answer in plain Python:
    the request path scores one short answer, where numpy's per-call cost (and a cold
    cache after the tiers ran) was most of the router's decision time."""

    @abstractmethod
    def score(self, answer: EdgeAnswer) -> float: ...

    def score_many(self, answers: Sequence[EdgeAnswer]) -> np.ndarray:
        return np.array([self.score(a) for a in answers], dtype=np.float64)


def geometric_mean_prob(logprobs: Sequence[float]) -> float:
    return math.exp(math.fsum(logprobs) / len(logprobs) if logprobs else NO_LOGPROB)


def min_prob(logprobs: Sequence[float]) -> float:
    return math.exp(min(logprobs) if logprobs else NO_LOGPROB)


class MeanProbabilityScorer(ConfidenceScorer):
    name = "mean_prob"

    def score(self, answer: EdgeAnswer) -> float:
        return geometric_mean_prob(answer.logprobs)


class MinProbabilityScorer(ConfidenceScorer):
    name = "min_prob"

    def score(self, answer: EdgeAnswer) -> float:
        return min_prob(answer.logprobs)


class EntropyScorer(ConfidenceScorer):
    """exp(−mean entropy): 1 when every next-token distribution was certain."""

    name = "entropy"

    def score(self, answer: EdgeAnswer) -> float:
        ent = answer.entropies
        return math.exp(-(math.fsum(ent) / len(ent) if ent else NO_ENTROPY))


class CloudJudgedScorer(ConfidenceScorer):
    """A statistic of the cloud's judgement of the answer (``EdgeAnswer.cloud_*``)."""

    needs_cloud: ClassVar[bool] = True


class CloudMeanProbabilityScorer(CloudJudgedScorer):
    name = "cloud_mean_prob"

    def score(self, answer: EdgeAnswer) -> float:
        return geometric_mean_prob(answer.cloud_logprobs)


class CloudMinProbabilityScorer(CloudJudgedScorer):
    name = "cloud_min_prob"

    def score(self, answer: EdgeAnswer) -> float:
        return min_prob(answer.cloud_logprobs)


class CloudTopOneScorer(CloudJudgedScorer):
    name = "cloud_top1_share"

    def score(self, answer: EdgeAnswer) -> float:
        ranks = answer.cloud_ranks
        return sum(r == 0 for r in ranks) / len(ranks) if ranks else 0.0


class CloudCombinedScorer(Scorer):
    """The cloud's judgement and the edge's confidence (``judge_features``) → a logistic
    head fitted on judged labels (``router/data/judge_head.npz`` unless given one)."""

    name = "cloud_combined"
    needs_cloud: ClassVar[bool] = True
    default_path = DEFAULT_JUDGE_HEAD

    def __init__(self, head: LogisticHead | None = None) -> None:
        self.head = head or LogisticHead.load(self.default_path)

    def score_many(self, answers: Sequence[EdgeAnswer]) -> np.ndarray:
        return self.head.predict(judge_features(answers))


class EmbeddingHead:
    """A trained logistic head over MiniLM features (loaded from router/data)."""

    default_path: ClassVar[Path]

    def __init__(self, head: LogisticHead, encoder: object | None = None) -> None:
        from tandem.router.embeddings import SentenceEncoder

        self.head = head
        self.encoder = encoder or SentenceEncoder()

    @classmethod
    def load(cls, path: Path | None = None, encoder: object | None = None) -> Self:
        return cls(LogisticHead.load(path or cls.default_path), encoder)


class LearnedScorer(EmbeddingHead, Scorer):
    """MiniLM(query), MiniLM(answer), their cosine and the confidence features → head."""

    name = "learned"
    default_path = DEFAULT_CASCADE_HEAD

    def score_many(self, answers: Sequence[EdgeAnswer]) -> np.ndarray:
        return self.head.predict(answer_features(self.encoder, answers))


class PromptRouter(EmbeddingHead):
    """P(the edge answer will be acceptable) from the prompt alone (MiniLM + head)."""

    default_path = DEFAULT_ROUTE_HEAD

    def predict_many(self, prompts: Sequence[str]) -> np.ndarray:
        return self.head.predict(prompt_features(self.encoder, prompts))


SCORERS: dict[str, type[Scorer]] = {
    cls.name: cls for cls in (MeanProbabilityScorer, MinProbabilityScorer, EntropyScorer,
                              LearnedScorer, CloudMeanProbabilityScorer,
                              CloudMinProbabilityScorer, CloudTopOneScorer,
                              CloudCombinedScorer)}


def create_scorer(name: str, encoder: object | None = None) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; known: {sorted(SCORERS)}")
    if name == LearnedScorer.name:
        return LearnedScorer.load(encoder=encoder)
    return SCORERS[name]()
