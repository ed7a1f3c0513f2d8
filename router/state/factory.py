"""Choosing the state store from configuration."""

from __future__ import annotations

import logging
from collections.abc import Callable

from tandem.router.state.base import StateStore
from tandem.router.state.memory import MemoryStateStore
from tandem.router.state.redis_store import RedisStateStore
from tandem.router.state.resilient import ResilientStateStore
from tandem.shared.log import log_event

logger = logging.getLogger(__name__)


def create_state_store(url: str, on_fallback: Callable[[str], None] = lambda op: None,
                       timeout_s: float = 0.25) -> StateStore:
    """``memory``, or a ``redis://`` URL (with local fallback while Redis is down)."""
    if url == "memory":
        log_event(logger, "state store: in-memory (single process; sessions lost on restart)")
        return MemoryStateStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        log_event(logger, "state store: redis", url=url)
        return ResilientStateStore(RedisStateStore(url, timeout_s), on_fallback)
    raise ValueError(f"state must be 'memory' or a redis:// URL, got {url!r}")
