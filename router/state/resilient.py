"""Redis first, process-local state while Redis is down.

A failed Redis call opens a short circuit: for ``retry_s`` every operation goes to the
local store at once (no timeout paid per request), each is counted, and the outage is
logged once; then one request at a time probes Redis while the others stay local. Session
turns written during the outage are kept and replayed to Redis when it answers again
(once each, by one replayer, before any newer write), so no acknowledged turn is lost or
doubled; while Redis is up every write is in Redis before the request is acknowledged.
Answers given meanwhile are labelled (``degraded``; the router's state_degraded).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tandem.router.state.base import Allowance, Completion, Limits, StateStore, Turn
from tandem.router.state.memory import MemoryStateStore
from tandem.router.state.redis_store import RedisStateStore
from tandem.shared.errors import Unavailable
from tandem.shared.log import log_event

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ResilientStateStore(StateStore):
    def __init__(self, primary: RedisStateStore, on_fallback: Callable[[str], None],
                 retry_s: float = 2.0) -> None:
        self.primary = primary
        self.local = MemoryStateStore()
        self._on_fallback = on_fallback
        self._retry_s = retry_s
        self._down_until = 0.0
        self._down = False
        self._probing = False  # one request at a time finds out whether Redis is back
        self._replaying = asyncio.Lock()
        # (tenant, session, turns, ttl_s, write id) of session writes made while down.
        self._pending: list[tuple[str, str, list[Turn], float, str]] = []

    @property
    def degraded(self) -> bool:
        return self._down

    async def _use(self, op: str, primary: Callable[[], Awaitable[T]],
                   local: Callable[[], Awaitable[T]]) -> T:
        if time.monotonic() >= self._down_until and not (self._down and self._probing):
            self._probing = self._down
            try:
                await self._replay()
                result = await primary()
            except Unavailable as exc:
                self._mark_down(exc)
            else:
                if self._down:
                    self._down = False
                    log_event(logger, "state store recovered: back on redis")
                return result
            finally:
                self._probing = False
        self._on_fallback(op)
        return await local()

    def _mark_down(self, exc: Unavailable) -> None:
        self._down_until = time.monotonic() + self._retry_s
        if not self._down:
            self._down = True
            log_event(logger, "state store degraded: redis unavailable, serving from local "
                      "state", level=logging.WARNING, error=str(exc))

    async def _replay(self) -> None:
        """Write the turns kept while Redis was down, oldest first. One replayer: the
        others wait for it, so that no newer turn of a session overtakes its older ones;
        each write carries its id, so a write Redis ran late (it had timed out before a
        freeze) is not added twice."""
        if not self._pending:
            return
        async with self._replaying:
            while self._pending:
                tenant, session_id, turns, ttl_s, write_id = self._pending[0]
                await self.primary.append(tenant, session_id, turns, ttl_s, write_id)
                self._pending.pop(0)

    async def history(self, tenant: str, session_id: str) -> list[Turn]:
        return await self._use("history", lambda: self.primary.history(tenant, session_id),
                               lambda: self.local.history(tenant, session_id))

    async def append(self, tenant: str, session_id: str, turns: list[Turn], ttl_s: float,
                     write_id: str = "") -> None:
        async def locally() -> None:
            await self.local.append(tenant, session_id, turns, ttl_s)
            self._pending.append((tenant, session_id, turns, ttl_s, write_id))

        await self._use("append", lambda: self.primary.append(tenant, session_id, turns, ttl_s,
                                                              write_id), locally)

    async def take_request(self, tenant: str, rate_per_s: float, burst: int) -> Allowance:
        return await self._use("rate_limit",
                               lambda: self.primary.take_request(tenant, rate_per_s, burst),
                               lambda: self.local.take_request(tenant, rate_per_s, burst))

    async def reserve_tokens(self, tenant: str, tokens: int, budget: int,
                             window_s: float) -> Allowance:
        return await self._use(
            "token_budget", lambda: self.primary.reserve_tokens(tenant, tokens, budget, window_s),
            lambda: self.local.reserve_tokens(tenant, tokens, budget, window_s))

    async def refund_tokens(self, tenant: str, tokens: int, window_s: float) -> None:
        await self._use("token_refund",
                        lambda: self.primary.refund_tokens(tenant, tokens, window_s),
                        lambda: self.local.refund_tokens(tenant, tokens, window_s))

    async def cache_get(self, tenant: str, key: str) -> bytes | None:
        return await self._use("cache_get", lambda: self.primary.cache_get(tenant, key),
                               lambda: self.local.cache_get(tenant, key))

    async def cache_put(self, tenant: str, key: str, value: bytes, ttl_s: float) -> None:
        await self._use("cache_put", lambda: self.primary.cache_put(tenant, key, value, ttl_s),
                        lambda: self.local.cache_put(tenant, key, value, ttl_s))

    async def affinity(self, tier: str, tenant: str, session_id: str) -> str | None:
        return await self._use("affinity",
                               lambda: self.primary.affinity(tier, tenant, session_id),
                               lambda: self.local.affinity(tier, tenant, session_id))

    async def set_affinity(self, tier: str, tenant: str, session_id: str, replica: str,
                           ttl_s: float) -> None:
        await self._use(
            "affinity", lambda: self.primary.set_affinity(tier, tenant, session_id, replica, ttl_s),
            lambda: self.local.set_affinity(tier, tenant, session_id, replica, ttl_s))

    async def drop_affinity(self, tier: str, tenant: str, session_id: str) -> None:
        await self._use("affinity", lambda: self.primary.drop_affinity(tier, tenant, session_id),
                        lambda: self.local.drop_affinity(tier, tenant, session_id))

    async def threshold(self, default: float) -> float:
        return await self._use("threshold", lambda: self.primary.threshold(default),
                               lambda: self.local.threshold(default))

    async def nudge_threshold(self, delta: float, default: float) -> float:
        return await self._use("threshold", lambda: self.primary.nudge_threshold(delta, default),
                               lambda: self.local.nudge_threshold(delta, default))

    async def add_stats(self, policy: str, counts: dict[str, int]) -> None:
        await self._use("stats", lambda: self.primary.add_stats(policy, counts),
                        lambda: self.local.add_stats(policy, counts))

    async def stats(self, policy: str) -> dict[str, int]:
        return await self._use("stats", lambda: self.primary.stats(policy),
                               lambda: self.local.stats(policy))

    async def admit(self, limits: Limits) -> Allowance:
        return await self._use("admit", lambda: self.primary.admit(limits),
                               lambda: self.local.admit(limits))

    async def unadmit(self, limits: Limits) -> None:
        await self._use("unadmit", lambda: self.primary.unadmit(limits),
                        lambda: self.local.unadmit(limits))

    async def complete(self, done: Completion) -> None:
        async def locally() -> None:
            await self.local.complete(done)
            if done.session_id:
                self._pending.append((done.tenant, done.session_id, done.turns,
                                      done.session_ttl_s, done.write_id))

        await self._use("complete", lambda: self.primary.complete(done), locally)

    async def close(self) -> None:
        await self.primary.close()
