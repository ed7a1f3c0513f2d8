"""Admission before any model work: per-tenant request rate limit and output-token
budget, checked together and atomically in the shared state store (one round trip to
Redis). Over a limit → RESOURCE_EXHAUSTED with the time after which a retry can succeed;
a refused request changes no state."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.router.config import RouterConfig
from tandem.router.state import RATE_LIMIT, Limits, StateStore
from tandem.shared.errors import ResourceExhausted


@dataclass(frozen=True)
class Reservation:
    tenant: str
    tokens: int  # output tokens reserved from the budget (0 when budgets are off)
    limits: Limits | None = None  # what was admitted (None: admission is off)


class Admission:
    def __init__(self, config: RouterConfig, state: StateStore) -> None:
        self.config = config
        self.state = state

    async def admit(self, tenant: str, max_tokens: int) -> Reservation:
        c = self.config
        if c.rate_limit_rps <= 0 and c.token_budget <= 0:
            return Reservation(tenant, 0)
        limits = Limits(tenant, c.rate_limit_rps, c.rate_limit_burst, max_tokens,
                        c.token_budget, c.token_budget_window_seconds)
        allowance = await self.state.admit(limits)
        if allowance.allowed:
            return Reservation(tenant, max_tokens if c.token_budget > 0 else 0, limits)
        retry_s = allowance.retry_after_s
        if allowance.limit == RATE_LIMIT:
            raise ResourceExhausted(
                f"rate limit of {c.rate_limit_rps:g} requests/s exceeded for tenant "
                f"{tenant or '-'!r}; retry after {retry_s:.3f} s", retry_s)
        raise ResourceExhausted(
            f"token budget of {c.token_budget} output tokens per "
            f"{c.token_budget_window_seconds:g} s exhausted for tenant {tenant or '-'!r} "
            f"(this request reserves max_tokens={max_tokens}); retry after "
            f"{retry_s:.1f} s", retry_s)

    async def withdraw(self, reservation: Reservation) -> None:
        """Undo an admission whose request was then refused, so that the refusal changes
        no state (the rate-limit token and the reserved tokens go back)."""
        if reservation.limits is not None:
            await self.state.unadmit(reservation.limits)

    @staticmethod
    def unused(reservation: Reservation, used_tokens: int) -> int:
        """Reserved tokens the request did not use (to give back)."""
        return max(reservation.tokens - used_tokens, 0)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Give back the reserved tokens the request did not use."""
        unused = self.unused(reservation, used_tokens)
        if unused > 0:
            await self.state.refund_tokens(reservation.tenant, unused,
                                           self.config.token_budget_window_seconds)
