"""The interface every edge backend implements, and the registry that picks one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tandem.shared.sampling import TokenSampler
from tandem.shared.tier_handler import GeneratedToken

if TYPE_CHECKING:
    from tandem.edge.config import EdgeConfig
    from tandem.shared.models import ModelSource


@dataclass(frozen=True)
class DraftResult:
    tokens: list[int]
    probs: list[float]
    cached_tokens: int  # prefix tokens whose KV was reused
    computed_tokens: int  # tokens run through the model
    # The sampling distribution at each drafted position ([V] each), when asked for and
    # the draft was sampled (greedy drafts have none).
    distributions: list[np.ndarray] | None = None


class EdgeBackend(ABC):
    """A model that generates token streams and drafts continuations of a sequence."""

    #: Weight format reported by Info (e.g. "Q4_1").
    dtype: str = ""

    @abstractmethod
    def generate(self, prompt_ids: Sequence[int], sampler: TokenSampler,
                 tenant: str) -> AsyncIterator[GeneratedToken]:
        """Sampled tokens after ``prompt_ids`` until the consumer stops iterating;
        ``tenant`` is whom the request is for (a backend that caches KV across requests
        must not let one tenant's cache serve another's)."""

    @abstractmethod
    async def draft(self, tokens: Sequence[int], num_tokens: int, sampler: TokenSampler,
                    stop_ids: frozenset[int], want_distributions: bool = False) -> DraftResult:
        """Up to ``num_tokens`` tokens after ``tokens`` (ending early at a ``stop_ids`` token),
        reusing cached KV for the longest common prefix with the previous call, so rejected
        drafts are rolled back rather than the prefix re-processed."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    def close(self) -> None:
        """Release the model."""


def create_backend(config: EdgeConfig, source: ModelSource) -> EdgeBackend:
    """Instantiate the configured backend (registry lookup, no fallback)."""
    path = BACKEND_CLASSES.get(config.backend)
    if path is None:
        raise ValueError(f"unknown edge backend {config.backend!r}; known: {sorted(BACKEND_CLASSES)}")
    module, _, attr = path.partition(":")
    cls = getattr(__import__(module, fromlist=[attr]), attr)  # lazy: torch only when used
    return cls.from_config(config, source)  # type: ignore[no-any-return]


# Backend name (EdgeConfig.backend) -> "module:class", imported only when chosen.
BACKEND_CLASSES = {
    "llama.cpp": "tandem.edge.llama_cpp_backend:LlamaCppBackend",
    "torch": "tandem.edge.torch_backend:TorchBackend",
}
