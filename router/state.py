"""Shared router state: conversation sessions, in Redis (for any number of router
replicas) or in memory (the single-process default, same interface).

Keys are namespaced per tenant and carry a TTL, so an abandoned session expires.
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod

from tandem.shared.errors import Unavailable
from tandem.shared.log import log_event

logger = logging.getLogger(__name__)

Turn = dict[str, str]


class StateStore(ABC):
    """Where conversation history lives."""

    @abstractmethod
    async def history(self, tenant: str, session_id: str) -> list[Turn]:
        """The session's turns, oldest first (empty for a new or expired session)."""

    @abstractmethod
    async def append(self, tenant: str, session_id: str, turns: list[Turn], ttl_s: float) -> None:
        """Add turns and push the session's expiry ``ttl_s`` into the future."""

    async def close(self) -> None:
        """Release connections."""


class MemoryStateStore(StateStore):
    """Process-local state for a single router (lost on restart)."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str], tuple[float, list[Turn]]] = {}

    async def history(self, tenant: str, session_id: str) -> list[Turn]:
        entry = self._sessions.get((tenant, session_id))
        if entry is None or entry[0] < time.monotonic():
            self._sessions.pop((tenant, session_id), None)
            return []
        return list(entry[1])

    async def append(self, tenant: str, session_id: str, turns: list[Turn], ttl_s: float) -> None:
        existing = await self.history(tenant, session_id)
        self._sessions[(tenant, session_id)] = (time.monotonic() + ttl_s, existing + turns)


class RedisStateStore(StateStore):
    """State in Redis with short, explicit timeouts (redis-py's defaults can block ~1 min)."""

    def __init__(self, url: str, timeout_s: float = 0.25) -> None:
        import redis.asyncio as redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1), decode_responses=True)

    @staticmethod
    def _key(tenant: str, session_id: str) -> str:
        return f"tandem:v1:session:{tenant or '-'}:{session_id}"

    async def history(self, tenant: str, session_id: str) -> list[Turn]:
        try:
            raw = await self._redis.lrange(self._key(tenant, session_id), 0, -1)
        except Exception as exc:  # noqa: BLE001 - any client error means Redis is unusable
            raise self._unavailable("read session", exc) from exc
        return [json.loads(item) for item in raw]

    async def append(self, tenant: str, session_id: str, turns: list[Turn], ttl_s: float) -> None:
        key = self._key(tenant, session_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.rpush(key, *(json.dumps(t) for t in turns))
                pipe.pexpire(key, int(ttl_s * 1000))
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            raise self._unavailable("store session", exc) from exc

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except Exception as exc:  # noqa: BLE001
            raise self._unavailable("ping", exc) from exc

    def _unavailable(self, what: str, exc: Exception) -> Unavailable:
        log_event(logger, "state store unavailable", level=logging.WARNING, op=what,
                  error=f"{type(exc).__name__}: {exc}")
        return Unavailable(f"state store unavailable ({what}): {type(exc).__name__}")

    async def close(self) -> None:
        await self._redis.aclose()


def create_state_store(url: str) -> StateStore:
    """``memory`` or a ``redis://`` URL."""
    if url == "memory":
        log_event(logger, "state store: in-memory (single process; sessions lost on restart)")
        return MemoryStateStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        log_event(logger, "state store: redis", url=url)
        return RedisStateStore(url)
    raise ValueError(f"state must be 'memory' or a redis:// URL, got {url!r}")
