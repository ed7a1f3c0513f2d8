"""The tiers' load as the router sees it: each tier's latest TierLoad, refreshed by polling
its Load RPC (no model work) in the background, for load-aware routing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from tandem.v1 import common_pb2

logger = logging.getLogger(__name__)

# How often a tier's load is read, and how old a reading may be before it counts as
# unknown (a tier that stopped answering: routing must not act on what it said before).
POLL_INTERVAL_S = 0.1
STALE_AFTER_S = 1.0
# A Load call may take this long: a tier whose cores are busy decoding answers late.
FETCH_TIMEOUT_S = 0.5


class LoadWatch:
    """The latest load of one tier; polling starts on first use, inside the event loop."""

    def __init__(self, fetch: Callable[[float], Awaitable[common_pb2.TierLoad]],
                 interval_s: float = POLL_INTERVAL_S) -> None:
        self._fetch = fetch  # called with a timeout in seconds
        self._interval_s = interval_s
        self._latest: common_pb2.TierLoad | None = None
        self._read_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def latest(self) -> common_pb2.TierLoad | None:
        """The last reading, or None when there is none yet or it is stale."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll())
        if time.monotonic() - self._read_at > STALE_AFTER_S:
            return None
        return self._latest

    async def _poll(self) -> None:
        while True:
            try:
                self._latest = await self._fetch(FETCH_TIMEOUT_S)
                self._read_at = time.monotonic()
            except grpc.aio.AioRpcError as exc:  # down or slow: the reading goes stale
                logger.debug("Load failed: %s", exc.code().name)
            await asyncio.sleep(self._interval_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
