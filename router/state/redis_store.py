"""State in Redis, shared by every router replica. Multi-key updates are atomic Lua
scripts; every key has a TTL; every call has a short, explicit timeout (redis-py's
defaults can block for about a minute against a frozen server)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tandem.router.state.base import Allowance, StateStore, Turn
from tandem.shared.errors import Unavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = "tandem:v1"
STATS_TTL_S = 30 * 24 * 3600

# Token bucket on Redis time: KEYS[1]=bucket; ARGV: rate/s, burst, ttl_ms.
# Returns {allowed (0/1), retry_after_ms}.
TAKE_REQUEST = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local rate, burst, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate / 1000)
local allowed, retry = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], ttl)
return {allowed, retry}
"""

# Fixed-window token budget, all or nothing: KEYS[1]=prefix; ARGV: tokens, budget,
# window_s. Returns {allowed, retry_after_ms}.
RESERVE_TOKENS = """
local t = redis.call('TIME')
local window = tonumber(ARGV[3])
local index = math.floor(t[1] / window)
local key = KEYS[1] .. ':' .. index
local used = tonumber(redis.call('GET', key) or '0')
local want, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
if used + want > budget then
  return {0, ((index + 1) * window - t[1]) * 1000}
end
redis.call('INCRBY', key, want)
redis.call('EXPIRE', key, window * 2)
return {1, 0}
"""

REFUND_TOKENS = """
local t = redis.call('TIME')
local key = KEYS[1] .. ':' .. math.floor(t[1] / tonumber(ARGV[2]))
if redis.call('EXISTS', key) == 1 then
  local left = redis.call('DECRBY', key, tonumber(ARGV[1]))
  if left < 0 then redis.call('SET', key, 0, 'KEEPTTL') end
end
return 0
"""

# Threshold nudge, clamped to [0, 1]: KEYS[1]=threshold; ARGV: delta, default.
NUDGE_THRESHOLD = """
local value = tonumber(redis.call('GET', KEYS[1]) or ARGV[2]) + tonumber(ARGV[1])
value = math.max(0, math.min(1, value))
redis.call('SET', KEYS[1], tostring(value), 'EX', 2592000)
return tostring(value)
"""


class RedisStateStore(StateStore):
    def __init__(self, url: str, timeout_s: float = 0.25) -> None:
        import redis.asyncio as redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1), decode_responses=False)
        self._take = self._redis.register_script(TAKE_REQUEST)
        self._reserve = self._redis.register_script(RESERVE_TOKENS)
        self._refund = self._redis.register_script(REFUND_TOKENS)
        self._nudge = self._redis.register_script(NUDGE_THRESHOLD)

    @staticmethod
    def _key(kind: str, tenant: str, name: str = "") -> str:
        return f"{PREFIX}:{kind}:{tenant or '-'}" + (f":{name}" if name else "")

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except Exception as exc:  # noqa: BLE001 - any client error means Redis is unusable
            raise Unavailable(f"state store unavailable ({op}): {type(exc).__name__}") from exc

    async def history(self, tenant: str, session_id: str) -> list[Turn]:
        raw = await self._call("history", lambda: self._redis.lrange(
            self._key("session", tenant, session_id), 0, -1))
        return [json.loads(item) for item in raw]

    async def append(self, tenant: str, session_id: str, turns: list[Turn], ttl_s: float) -> None:
        key = self._key("session", tenant, session_id)

        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.rpush(key, *(json.dumps(t) for t in turns))
                pipe.pexpire(key, int(ttl_s * 1000))
                await pipe.execute()

        await self._call("append", write)

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

    async def threshold(self, default: float) -> float:
        raw = await self._call("threshold", lambda: self._redis.get(f"{PREFIX}:threshold"))
        return float(raw) if raw is not None else default

    async def nudge_threshold(self, delta: float, default: float) -> float:
        raw = await self._call("threshold", lambda: self._nudge(
            keys=[f"{PREFIX}:threshold"], args=[delta, default]))
        return float(raw)

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
