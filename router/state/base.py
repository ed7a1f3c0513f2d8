"""The state-store interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

Turn = dict[str, str]


@dataclass(frozen=True)
class Allowance:
    """Outcome of a rate-limit or budget check."""

    allowed: bool
    retry_after_s: float = 0.0
    limit: str = ""  # which limit refused: RATE_LIMIT or TOKEN_BUDGET


RATE_LIMIT = "rate_limit"
TOKEN_BUDGET = "token_budget"


@dataclass(frozen=True)
class Limits:
    """A request's admission: one request from the tenant's rate limit (off when
    ``rate_per_s`` is 0) and ``tokens`` from its token budget (off when ``budget`` is 0)."""

    tenant: str
    rate_per_s: float = 0.0
    burst: int = 0
    tokens: int = 0
    budget: int = 0
    window_s: float = 60.0


@dataclass(frozen=True)
class Completion:
    """Everything written when a request completes: the session's new turns, the
    unused part of the token reservation, the response-cache entry and the statistics."""

    tenant: str
    policy: str
    stats: dict[str, int]
    session_id: str = ""
    turns: list[Turn] = field(default_factory=list)
    session_ttl_s: float = 0.0
    refund_tokens: int = 0
    budget_window_s: float = 60.0
    cache_key: str | None = None
    cache_value: bytes = b""
    cache_ttl_s: float = 0.0
    # Names the write so that it is applied once (a store that can see one write twice:
    # a late execution after a freeze and the fallback's replay); empty: no such check.
    write_id: str = ""


class StateStore(ABC):
    """All router state. Keys are namespaced per tenant and every key carries a TTL."""

    @property
    def degraded(self) -> bool:
        """Whether operations are served from a local fallback instead of the shared store
        right now (the router labels the answers it gives meanwhile: state_degraded)."""
        return False

    # -- sessions -------------------------------------------------------------------
    @abstractmethod
    async def history(self, tenant: str, session_id: str) -> list[Turn]:
        """The session's turns, oldest first (empty for a new or expired session)."""

    @abstractmethod
    async def append(self, tenant: str, session_id: str, turns: list[Turn], ttl_s: float,
                     write_id: str = "") -> None:
        """Add turns and push the session's expiry ``ttl_s`` into the future (once per
        ``write_id`` where the backend can tell; see Completion.write_id)."""

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

    # -- thresholds the budget controllers steer (the cascade's, speculative-cascade's) --
    @abstractmethod
    async def threshold(self, default: float, name: str = "threshold") -> float:
        """The fleet's current value of threshold ``name`` (initialised to ``default``)."""

    @abstractmethod
    async def nudge_threshold(self, delta: float, default: float,
                              name: str = "threshold") -> float:
        """Add ``delta`` to threshold ``name`` atomically, clamped to [0, 1]; returns it."""

    # -- statistics -----------------------------------------------------------------
    @abstractmethod
    async def add_stats(self, policy: str, counts: dict[str, int]) -> None:
        """Add to the fleet's per-policy counters."""

    @abstractmethod
    async def stats(self, policy: str) -> dict[str, int]: ...

    # -- replica affinity: which replica of a tier holds a session's KV --------------------
    @abstractmethod
    async def affinity(self, tier: str, tenant: str, session_id: str) -> str | None:
        """The replica address the session is bound to on ``tier`` (None: unbound)."""

    @abstractmethod
    async def set_affinity(self, tier: str, tenant: str, session_id: str, replica: str,
                           ttl_s: float) -> None:
        """Bind the session to ``replica`` for ``ttl_s`` (every router replica agrees)."""

    @abstractmethod
    async def drop_affinity(self, tier: str, tenant: str, session_id: str) -> None: ...

    # -- batched operations (one round trip where the backend can) ---------------------
    async def admit(self, limits: Limits) -> Allowance:
        """Rate limit, then token budget. Backends that can check both atomically change
        nothing when either refuses; this default may have spent the rate-limit token."""
        if limits.rate_per_s > 0:
            allowance = await self.take_request(limits.tenant, limits.rate_per_s, limits.burst)
            if not allowance.allowed:
                return Allowance(False, allowance.retry_after_s, RATE_LIMIT)
        if limits.budget > 0:
            allowance = await self.reserve_tokens(limits.tenant, limits.tokens, limits.budget,
                                                  limits.window_s)
            if not allowance.allowed:
                return Allowance(False, allowance.retry_after_s, TOKEN_BUDGET)
        return Allowance(True)

    @abstractmethod
    async def unadmit(self, limits: Limits) -> None:
        """Undo a granted ``admit(limits)`` (the request was refused after it): give back
        its rate-limit token, up to the burst, and its reserved budget tokens."""

    async def complete(self, done: Completion) -> None:
        """Apply a completed request's writes (this default: one after another)."""
        if done.session_id:
            await self.append(done.tenant, done.session_id, done.turns, done.session_ttl_s,
                              done.write_id)
        if done.refund_tokens > 0:
            await self.refund_tokens(done.tenant, done.refund_tokens, done.budget_window_s)
        if done.cache_key:
            await self.cache_put(done.tenant, done.cache_key, done.cache_value, done.cache_ttl_s)
        await self.add_stats(done.policy, done.stats)

    async def close(self) -> None:
        """Release connections."""
