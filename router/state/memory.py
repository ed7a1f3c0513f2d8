"""Process-local state: the single-router default and the fallback while Redis is down."""

from __future__ import annotations

import time
from collections import defaultdict

from tandem.router.state.base import TOKEN_BUDGET, Allowance, Limits, StateStore, Turn

MAX_CACHE_ENTRIES = 10_000


class MemoryStateStore(StateStore):
    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str], tuple[float, list[Turn]]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)
        self._budgets: dict[tuple[str, int], int] = {}  # (tenant, window index) -> used
        self._cache: dict[tuple[str, str], tuple[float, bytes]] = {}
        self._thresholds: dict[str, float] = {}
        self._stats: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._affinity: dict[tuple[str, str, str], tuple[float, str]] = {}

    async def history(self, tenant: str, session_id: str) -> list[Turn]:
        entry = self._sessions.get((tenant, session_id))
        if entry is None or entry[0] < time.monotonic():
            self._sessions.pop((tenant, session_id), None)
            return []
        return list(entry[1])

    async def append(self, tenant: str, session_id: str, turns: list[Turn], ttl_s: float,
                     write_id: str = "") -> None:
        existing = await self.history(tenant, session_id)
        self._sessions[(tenant, session_id)] = (time.monotonic() + ttl_s, existing + turns)

    async def take_request(self, tenant: str, rate_per_s: float, burst: int) -> Allowance:
        now = time.monotonic()
        tokens, at = self._buckets.get(tenant, (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * rate_per_s)
        if tokens >= 1.0:
            self._buckets[tenant] = (tokens - 1.0, now)
            return Allowance(True)
        self._buckets[tenant] = (tokens, now)
        return Allowance(False, (1.0 - tokens) / rate_per_s)

    def _window(self, window_s: float) -> tuple[int, float]:
        now = time.time()
        index = int(now // window_s)
        return index, (index + 1) * window_s - now

    async def reserve_tokens(self, tenant: str, tokens: int, budget: int,
                             window_s: float) -> Allowance:
        index, left_s = self._window(window_s)
        used = self._budgets.get((tenant, index), 0)
        if used + tokens > budget:
            return Allowance(False, left_s)
        self._budgets = {k: v for k, v in self._budgets.items() if k[1] >= index}
        self._budgets[(tenant, index)] = used + tokens
        return Allowance(True)

    async def admit(self, limits: Limits) -> Allowance:
        """All or nothing: the budget is checked before the rate-limit token is spent (no
        await runs between the checks and the writes, so this is atomic in-process)."""
        if limits.budget > 0:
            index, left_s = self._window(limits.window_s)
            if self._budgets.get((limits.tenant, index), 0) + limits.tokens > limits.budget:
                return Allowance(False, left_s, TOKEN_BUDGET)
        return await super().admit(limits)

    async def unadmit(self, limits: Limits) -> None:
        if limits.rate_per_s > 0 and limits.tenant in self._buckets:
            tokens, at = self._buckets[limits.tenant]
            self._buckets[limits.tenant] = (min(float(limits.burst), tokens + 1.0), at)
        if limits.budget > 0:
            await self.refund_tokens(limits.tenant, limits.tokens, limits.window_s)

    async def refund_tokens(self, tenant: str, tokens: int, window_s: float) -> None:
        index, _ = self._window(window_s)
        key = (tenant, index)
        if key in self._budgets:
            self._budgets[key] = max(0, self._budgets[key] - tokens)

    async def cache_get(self, tenant: str, key: str) -> bytes | None:
        entry = self._cache.get((tenant, key))
        if entry is None or entry[0] < time.monotonic():
            self._cache.pop((tenant, key), None)
            return None
        return entry[1]

    async def cache_put(self, tenant: str, key: str, value: bytes, ttl_s: float) -> None:
        if len(self._cache) >= MAX_CACHE_ENTRIES:  # drop the oldest insertion
            self._cache.pop(next(iter(self._cache)))
        self._cache[(tenant, key)] = (time.monotonic() + ttl_s, value)

    async def affinity(self, tier: str, tenant: str, session_id: str) -> str | None:
        entry = self._affinity.get((tier, tenant, session_id))
        if entry is None or entry[0] < time.monotonic():
            self._affinity.pop((tier, tenant, session_id), None)
            return None
        return entry[1]

    async def set_affinity(self, tier: str, tenant: str, session_id: str, replica: str,
                           ttl_s: float) -> None:
        if len(self._affinity) >= MAX_CACHE_ENTRIES:  # drop the oldest binding
            self._affinity.pop(next(iter(self._affinity)))
        self._affinity[(tier, tenant, session_id)] = (time.monotonic() + ttl_s, replica)

    async def drop_affinity(self, tier: str, tenant: str, session_id: str) -> None:
        self._affinity.pop((tier, tenant, session_id), None)

    async def threshold(self, default: float, name: str = "threshold") -> float:
        return self._thresholds.setdefault(name, default)

    async def nudge_threshold(self, delta: float, default: float,
                              name: str = "threshold") -> float:
        value = min(1.0, max(0.0, await self.threshold(default, name) + delta))
        self._thresholds[name] = value
        return value

    async def add_stats(self, policy: str, counts: dict[str, int]) -> None:
        for name, value in counts.items():
            self._stats[policy][name] += value

    async def stats(self, policy: str) -> dict[str, int]:
        return dict(self._stats[policy])
