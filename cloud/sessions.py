"""Speculative sessions whose KV the cloud keeps between Verify rounds, so a round never
re-processes the prefix it has already seen. Each idle session holds a finished
sequence and its KV blocks; bounded by session count, total tokens and idle time (LRU),
and the first thing dropped when the KV pool runs short."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from tandem.cloud.scheduler import Sequence

SessionKey = tuple[str, str]  # (tenant, session id): tenants never share an entry


class SessionStore:
    def __init__(self, max_sessions: int, max_tokens: int, idle_seconds: float) -> None:
        self._entries: OrderedDict[SessionKey, tuple[Sequence, float]] = OrderedDict()
        self._max_sessions = max_sessions
        self._max_tokens = max_tokens
        self._idle_seconds = idle_seconds
        # Frees a dropped session's KV blocks (set by the engine).
        self.on_evict: Callable[[Sequence], None] = lambda seq: None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def cached_tokens(self) -> int:
        return sum(seq.num_computed for seq, _ in self._entries.values())

    def take(self, key: SessionKey) -> Sequence | None:
        """Remove and return the session's sequence for a round (None if not cached)."""
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[0]

    def put(self, key: SessionKey, seq: Sequence) -> None:
        """Keep ``seq`` as the session's state (most recently used), then enforce bounds."""
        previous = self._entries.pop(key, None)
        if previous is not None and previous[0] is not seq:
            self.on_evict(previous[0])  # a concurrent round of the same session finished
        self._entries[key] = (seq, time.monotonic())
        self.evict(keep=key)

    def drop(self, tenant: str, session_id: str) -> bool:
        entry = self._entries.pop((tenant, session_id), None)
        if entry is not None:
            self.on_evict(entry[0])
        return entry is not None

    def evict_oldest(self) -> bool:
        """Drop the least recently used session; False when there is none."""
        if not self._entries:
            return False
        _, (seq, _) = self._entries.popitem(last=False)
        self.on_evict(seq)
        return True

    def evict(self, keep: SessionKey | None = None) -> None:
        """Drop idle sessions, then least recently used ones while over a bound."""
        now = time.monotonic()
        for key in [k for k, (_, used) in self._entries.items()
                    if now - used > self._idle_seconds and k != keep]:
            self.on_evict(self._entries.pop(key)[0])
        while len(self._entries) > 1 and (
                len(self._entries) > self._max_sessions or self.cached_tokens > self._max_tokens):
            oldest = next(iter(self._entries))
            if oldest == keep:
                break
            self.on_evict(self._entries.pop(oldest)[0])
