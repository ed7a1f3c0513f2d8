"""The state-store interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

Turn = dict[str, str]


@dataclass(frozen=True)
class Allowance:
    """Outcome of a rate-limit or budget check."""

    allowed: bool
    retry_after_s: float = 0.0


class StateStore(ABC):
    """All router state. Keys are namespaced per tenant and every key carries a TTL."""

    # -- sessions -------------------------------------------------------------------
    @abstractmethod
    async def history(self, tenant: str, session_id: str) -> list[Turn]:
        """The session's turns, oldest first (empty for a new or expired session)."""

    @abstractmethod
    async def append(self, tenant: str, session_id: str, turns: list[Turn], ttl_s: float) -> None:
        """Add turns and push the session's expiry ``ttl_s`` into the future."""

    # -- admission ------------------------------------------------------------------
    @abstractmethod
    async def take_request(self, tenant: str, rate_per_s: float, burst: int) -> Allowance:
        """Token bucket of requests per tenant (atomic across replicas)."""

    @abstractmethod
    async def reserve_tokens(self, tenant: str, tokens: int, budget: int,
                             window_s: float) -> Allowance:
        """Reserve ``tokens`` of the tenant's per-window token budget (all or nothing)."""

    @abstractmethod
    async def refund_tokens(self, tenant: str, tokens: int, window_s: float) -> None:
        """Give back reserved tokens that were not used."""

    # -- response cache -------------------------------------------------------------
    @abstractmethod
    async def cache_get(self, tenant: str, key: str) -> bytes | None: ...

    @abstractmethod
    async def cache_put(self, tenant: str, key: str, value: bytes, ttl_s: float) -> None: ...

    # -- cascade threshold and its budget controller --------------------------------
    @abstractmethod
    async def threshold(self, default: float) -> float:
        """The fleet's current cascade threshold (initialised to ``default``)."""

    @abstractmethod
    async def nudge_threshold(self, delta: float, default: float) -> float:
        """Add ``delta`` to the threshold atomically, clamped to [0, 1]; returns it."""

    # -- statistics -----------------------------------------------------------------
    @abstractmethod
    async def add_stats(self, policy: str, counts: dict[str, int]) -> None:
        """Add to the fleet's per-policy counters."""

    @abstractmethod
    async def stats(self, policy: str) -> dict[str, int]: ...

    async def close(self) -> None:
        """Release connections."""
