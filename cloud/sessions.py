"""KV caches the cloud keeps per speculative session, so a round never re-processes the
prefix it has already seen. Bounded by session count, total tokens and idle time (LRU)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SessionKV:
    """One session's cached sequence and the model's KV cache for it."""

    cache: Any  # a transformers Cache holding KV for exactly `tokens`
    tokens: list[int] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)


class SessionStore:
    """LRU map (tenant, session id) -> SessionKV; tenants never share an entry."""

    def __init__(self, max_sessions: int, max_tokens: int, idle_seconds: float,
                 new_cache: Any) -> None:
        self._entries: OrderedDict[tuple[str, str], SessionKV] = OrderedDict()
        self._max_sessions = max_sessions
        self._max_tokens = max_tokens
        self._idle_seconds = idle_seconds
        self._new_cache = new_cache

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def cached_tokens(self) -> int:
        return sum(len(e.tokens) for e in self._entries.values())

    def acquire(self, tenant: str, session_id: str) -> SessionKV:
        """The session's entry (created empty if absent), marked most recently used."""
        key = (tenant, session_id)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = SessionKV(cache=self._new_cache())
        self._entries.move_to_end(key)
        entry.last_used = time.monotonic()
        self.evict(keep=key)
        return entry

    def drop(self, tenant: str, session_id: str) -> bool:
        return self._entries.pop((tenant, session_id), None) is not None

    def evict(self, keep: tuple[str, str] | None = None) -> None:
        """Drop idle sessions, then least recently used ones while over a bound."""
        now = time.monotonic()
        for key in [k for k, e in self._entries.items()
                    if now - e.last_used > self._idle_seconds and k != keep]:
            del self._entries[key]
        while len(self._entries) > 1 and (
                len(self._entries) > self._max_sessions or self.cached_tokens > self._max_tokens):
            oldest = next(iter(self._entries))
            if oldest == keep:
                break
            # An entry in use by a running round is still referenced there and stays valid.
            del self._entries[oldest]
