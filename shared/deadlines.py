"""Deadline propagation: Python gRPC does not pass a caller's deadline on by itself, so
every outbound call takes ``timeout=deadline.timeout()``."""

from __future__ import annotations

import time

import grpc

from tandem.shared.errors import DeadlineExceeded

# Time kept back so our own reply can still reach the caller before its deadline.
DEADLINE_MARGIN_S = 0.05


class Deadline:
    """An absolute point in time by which a request must be answered."""

    def __init__(self, seconds: float | None) -> None:
        self._at = None if seconds is None else time.monotonic() + seconds

    @classmethod
    def from_context(cls, context: grpc.aio.ServicerContext, default_s: float) -> Deadline:
        """The caller's deadline, or ``default_s`` when the caller set none."""
        remaining = context.time_remaining()
        return cls(default_s if remaining is None else min(remaining, default_s))

    def remaining(self) -> float | None:
        return None if self._at is None else self._at - time.monotonic()

    def timeout(self) -> float | None:
        """Seconds an outbound call may take (the remaining time minus a margin).

        Raises DeadlineExceeded when the time is spent, so no outbound work starts.
        """
        remaining = self.remaining()
        if remaining is None:
            return None
        budget = remaining - DEADLINE_MARGIN_S
        if budget <= 0:
            raise DeadlineExceeded("deadline exceeded")
        return budget
