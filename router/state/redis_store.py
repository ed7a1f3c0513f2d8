"""State in Redis, shared by every router replica. Multi-key updates are atomic Lua
scripts; every key has a TTL; every call has a short, explicit timeout (redis-py's
defaults can block for about a minute against a frozen server)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tandem.router.state.base import (RATE_LIMIT, TOKEN_BUDGET, Allowance, Completion, Limits,
                                      StateStore, Turn)
from tandem.router.state.redis_scripts import (ADMIT, APPEND_ONCE, COMPLETE, NUDGE_THRESHOLD,
                                               REFUND_TOKENS, RESERVE_TOKENS, TAKE_REQUEST,
                                               UNADMIT, WRITE_MARKER_MS)
from tandem.shared.errors import Unavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")

# v2: the tenant is length-prefixed. v1 joined parts with ':' (which names may contain), so
# tenant "a" + session "b:c" and tenant "a:b" + session "c" were one key, and an empty
# tenant was the tenant "-".
PREFIX = "tandem:v2"
STATS_TTL_S = 30 * 24 * 3600
# How long this replica trusts the fleet's value of a threshold it last saw. Its own nudges
# refresh it (a nudge returns the fleet's value, every replica's nudges included), so a
# busy replica never reads it separately; the budget controller tolerates the staleness.
THRESHOLD_FRESH_S = 1.0
ADMIT_REFUSALS = {1: RATE_LIMIT, 2: TOKEN_BUDGET}


class RedisStateStore(StateStore):
    def __init__(self, url: str, timeout_s: float = 0.25) -> None:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.url = url
        # One retry on a fresh connection: a pooled connection to a Redis that restarted
        # fails its next command. (redis.retry.Retry, the synchronous class, passed here
        # retried nothing: the async client awaits what its call_with_retry returns, so
        # each stale connection failed a request and logged a spurious outage.) A timeout is
        # not retried: against a frozen Redis it would only double the wait.
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            decode_responses=False)
        self._take = self._redis.register_script(TAKE_REQUEST)
        self._reserve = self._redis.register_script(RESERVE_TOKENS)
        self._refund = self._redis.register_script(REFUND_TOKENS)
        self._nudge = self._redis.register_script(NUDGE_THRESHOLD)
        self._admit = self._redis.register_script(ADMIT)
        self._unadmit = self._redis.register_script(UNADMIT)
        self._complete = self._redis.register_script(COMPLETE)
        self._append_once = self._redis.register_script(APPEND_ONCE)
        # threshold name -> (value, monotonic time seen)
        self._thresholds_seen: dict[str, tuple[float, float]] = {}

    @staticmethod
    def _key(kind: str, tenant: str, name: str = "") -> str:
        """``tandem:v2:<kind>:<len(tenant)>:<tenant>[:<name>]``: the tenant's length says
        where it ends, and the name is the last part, so no two (tenant, name) pairs share a
        key whatever characters they hold."""
        return f"{PREFIX}:{kind}:{len(tenant)}:{tenant}" + (f":{name}" if name else "")

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except Exception as exc:  # noqa: BLE001 - any client error means Redis is unusable
            raise Unavailable(f"state store unavailable ({op}): {type(exc).__name__}") from exc

    async def history(self, tenant: str, session_id: str) -> list[Turn]:
        raw = await self._call("history", lambda: self._redis.lrange(
            self._key("session", tenant, session_id), 0, -1))
        return [json.loads(item) for item in raw]

    async def append(self, tenant: str, session_id: str, turns: list[Turn], ttl_s: float,
                     write_id: str = "") -> None:
        await self._call("append", lambda: self._append_once(
            keys=[self._key("session", tenant, session_id), self._marker(write_id)],
            args=[int(ttl_s * 1000), WRITE_MARKER_MS, *(json.dumps(t) for t in turns)]))

    @staticmethod
    def _marker(write_id: str) -> str:
        return f"{PREFIX}:write:{write_id}" if write_id else "-"

    async def take_request(self, tenant: str, rate_per_s: float, burst: int) -> Allowance:
        ttl_ms = int(max(burst / rate_per_s, 1.0) * 2000)
        allowed, retry_ms = await self._call("rate_limit", lambda: self._take(
            keys=[self._key("bucket", tenant)], args=[rate_per_s, burst, ttl_ms]))
        return Allowance(bool(allowed), int(retry_ms) / 1000)

    async def reserve_tokens(self, tenant: str, tokens: int, budget: int,
                             window_s: float) -> Allowance:
        allowed, retry_ms = await self._call("token_budget", lambda: self._reserve(
            keys=[self._key("budget", tenant)], args=[tokens, budget, int(window_s)]))
        return Allowance(bool(allowed), int(retry_ms) / 1000)

    async def refund_tokens(self, tenant: str, tokens: int, window_s: float) -> None:
        await self._call("token_refund", lambda: self._refund(
            keys=[self._key("budget", tenant)], args=[tokens, int(window_s)]))

    async def cache_get(self, tenant: str, key: str) -> bytes | None:
        return await self._call("cache_get", lambda: self._redis.get(
            self._key("cache", tenant, key)))

    async def cache_put(self, tenant: str, key: str, value: bytes, ttl_s: float) -> None:
        await self._call("cache_put", lambda: self._redis.set(
            self._key("cache", tenant, key), value, px=int(ttl_s * 1000)))

    async def affinity(self, tier: str, tenant: str, session_id: str) -> str | None:
        raw = await self._call("affinity", lambda: self._redis.get(
            self._key("affinity", tenant, f"{tier}:{session_id}")))
        return None if raw is None else raw.decode()

    async def set_affinity(self, tier: str, tenant: str, session_id: str, replica: str,
                           ttl_s: float) -> None:
        await self._call("affinity", lambda: self._redis.set(
            self._key("affinity", tenant, f"{tier}:{session_id}"), replica,
            px=int(ttl_s * 1000)))

    async def drop_affinity(self, tier: str, tenant: str, session_id: str) -> None:
        await self._call("affinity", lambda: self._redis.delete(
            self._key("affinity", tenant, f"{tier}:{session_id}")))

    async def threshold(self, default: float, name: str = "threshold") -> float:
        seen = self._thresholds_seen.get(name)
        if seen is not None and time.monotonic() - seen[1] < THRESHOLD_FRESH_S:
            return seen[0]
        raw = await self._call("threshold", lambda: self._redis.get(f"{PREFIX}:{name}"))
        if raw is None:
            return default
        self._thresholds_seen[name] = (float(raw), time.monotonic())
        return float(raw)

    async def nudge_threshold(self, delta: float, default: float,
                              name: str = "threshold") -> float:
        raw = await self._call("threshold", lambda: self._nudge(
            keys=[f"{PREFIX}:{name}"], args=[delta, default]))
        self._thresholds_seen[name] = (float(raw), time.monotonic())
        return float(raw)

    async def admit(self, limits: Limits) -> Allowance:
        """Rate limit and token budget in one atomic script (nothing changes on refusal)."""
        ttl_ms = (int(max(limits.burst / limits.rate_per_s, 1.0) * 2000)
                  if limits.rate_per_s > 0 else 0)
        refused, retry_ms = await self._call("admit", lambda: self._admit(
            keys=[self._key("bucket", limits.tenant), self._key("budget", limits.tenant)],
            args=[limits.rate_per_s, limits.burst, ttl_ms, limits.tokens, limits.budget,
                  int(limits.window_s)]))
        if refused:
            return Allowance(False, int(retry_ms) / 1000, ADMIT_REFUSALS[int(refused)])
        return Allowance(True)

    async def unadmit(self, limits: Limits) -> None:
        await self._call("unadmit", lambda: self._unadmit(
            keys=[self._key("bucket", limits.tenant), self._key("budget", limits.tenant)],
            args=[limits.rate_per_s, limits.burst, limits.tokens, limits.budget,
                  int(limits.window_s)]))

    async def complete(self, done: Completion) -> None:
        """All of a completed request's writes in one atomic script (one round trip)."""
        turns = [json.dumps(t) for t in done.turns] if done.session_id else []
        cache_ttl_ms = int(done.cache_ttl_s * 1000) if done.cache_key else 0
        stats = [x for name, value in done.stats.items() for x in (name, value)]
        keys = [self._key("session", done.tenant, done.session_id or "-"),
                self._key("budget", done.tenant),
                self._key("cache", done.tenant, done.cache_key or "-"),
                f"{PREFIX}:stats:{done.policy}",
                self._marker(done.write_id if turns else "")]
        args = [len(turns), int(done.session_ttl_s * 1000), done.refund_tokens,
                int(done.budget_window_s), cache_ttl_ms, done.cache_value if cache_ttl_ms else b"",
                STATS_TTL_S, WRITE_MARKER_MS, *turns, *stats]
        await self._call("complete", lambda: self._complete(keys=keys, args=args))

    async def add_stats(self, policy: str, counts: dict[str, int]) -> None:
        key = f"{PREFIX}:stats:{policy}"

        async def write() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                for name, value in counts.items():
                    pipe.hincrby(key, name, value)
                pipe.expire(key, STATS_TTL_S)
                return await pipe.execute()

        await self._call("stats", write)

    async def stats(self, policy: str) -> dict[str, int]:
        raw = await self._call("stats", lambda: self._redis.hgetall(f"{PREFIX}:stats:{policy}"))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def ping(self) -> None:
        await self._call("ping", self._redis.ping)

    async def close(self) -> None:
        await self._redis.aclose()
