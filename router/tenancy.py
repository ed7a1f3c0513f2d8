"""Per-tenant concurrency caps: how many requests one tenant may have in flight on this
router, so that a tenant that floods cannot take the tiers' whole batch and queue from the
others. Beyond the cap a request is refused RESOURCE_EXHAUSTED at once, before any state
or model work, with a retry-after hint of about one of that tenant's requests.

Why a cap and not only fair queuing: on a CPU-bound tier every request in the batch
slows every other (a cloud step of 25 sequences takes ~2.2x one of 1 on 2 cores), so a
tenant's share of the batch, not only its place in the queue, sets the others' latency.
The cap is per router process (a fleet of N routers allows N x cap per tenant).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from tandem.shared.errors import ResourceExhausted

# Weight of a finished request's duration in the average (the retry hint).
DURATION_EWMA = 0.2
MIN_RETRY_S = 0.05


class TenantLimiter:
    def __init__(self, max_concurrent: int) -> None:
        self.max_concurrent = max_concurrent  # 0: no cap
        self._in_flight: dict[str, int] = defaultdict(int)  # tenants with requests only
        self._duration_s = 1.0  # average request time (until one is measured: 1 s)

    def in_flight(self, tenant: str) -> int:
        return self._in_flight.get(tenant, 0)

    @contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        """A place for one request of ``tenant`` while the block runs; raises
        ResourceExhausted when the tenant already has ``max_concurrent`` in flight."""
        if self.max_concurrent <= 0:
            yield
            return
        if self._in_flight[tenant] >= self.max_concurrent:
            retry = max(self._duration_s, MIN_RETRY_S)
            raise ResourceExhausted(
                f"tenant {tenant or '-'!r} already has {self._in_flight[tenant]} requests in "
                f"flight (the limit per tenant is {self.max_concurrent})", round(retry, 3))
        self._in_flight[tenant] += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self._in_flight[tenant] -= 1
            if not self._in_flight[tenant]:
                del self._in_flight[tenant]
            took = time.monotonic() - started
            self._duration_s = (1 - DURATION_EWMA) * self._duration_s + DURATION_EWMA * took
