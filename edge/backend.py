"""The interface every edge backend implements, and the registry that picks one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tandem.shared.tier_handler import GeneratedToken, TokenRequest
from tandem.v1 import common_pb2

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

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

    #: Sequences the backend serves at once (its slots).
    slots: int = 1

    @abstractmethod
    def generate(self, request: TokenRequest) -> AsyncIterator[GeneratedToken]:
        """Sampled tokens after ``request.prompt_ids`` until the consumer stops iterating.
        Raises ResourceExhausted before any model work when the request cannot be served
        in time; ``request.tenant`` is whom it is for (a backend that caches KV across
        requests must not let one tenant's cache serve another's)."""

    @abstractmethod
    async def draft(self, request: TokenRequest, num_tokens: int, stop_ids: frozenset[int],
                    want_distributions: bool = False) -> DraftResult:
        """Up to ``num_tokens`` tokens after ``request.prompt_ids`` (ending early at a
        ``stop_ids`` token), reusing cached KV for the longest common prefix with an earlier
        call, so rejected drafts are rolled back rather than the prefix re-processed."""

    @abstractmethod
    def load(self) -> common_pb2.TierLoad:
        """How busy the backend is (queue, running, capacity, estimated wait)."""

    @abstractmethod
    async def warm_up(self, token_id: int) -> None:
        """Generate a few tokens before serving (times a step for admission)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    def close(self) -> None:
        """Release the model."""


def create_backend(config: EdgeConfig, source: ModelSource,
                   registry: CollectorRegistry | None = None) -> EdgeBackend:
    """Instantiate the configured backend (registry lookup, no fallback); its queue
    metrics go to ``registry``."""
    path = BACKEND_CLASSES.get(config.backend)
    if path is None:
        raise ValueError(f"unknown edge backend {config.backend!r}; known: {sorted(BACKEND_CLASSES)}")
    module, _, attr = path.partition(":")
    cls = getattr(__import__(module, fromlist=[attr]), attr)  # lazy: torch only when used
    return cls.from_config(config, source, registry)  # type: ignore[no-any-return]


# Backend name (EdgeConfig.backend) -> "module:class", imported only when chosen.
BACKEND_CLASSES = {
    "llama.cpp": "tandem.edge.llama_cpp_backend:LlamaCppBackend",
    "torch": "tandem.edge.torch_backend:TorchBackend",
}
