"""What every scenario shares: its report (what is promised, what was measured, which
promises failed) and small waiting helpers."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    """One scenario's outcome: ``failures`` lists each broken promise (empty: passed)."""

    scenario: str
    promise: str
    measured: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    skipped: str = ""
    seconds: float = 0.0

    def check(self, condition: bool, failure: str) -> bool:
        if not condition:
            self.failures.append(failure)
        return condition

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scenario": self.scenario, "promise": self.promise,
                               "passed": not self.failures and not self.skipped,
                               "seconds": round(self.seconds, 1), "measured": self.measured,
                               "failures": self.failures}
        if self.skipped:
            out["skipped"] = self.skipped
        return out

    def print(self) -> None:
        """One JSON line on stdout (what the battery prints for each scenario)."""
        print(json.dumps(self.to_json(), default=str), file=sys.stdout, flush=True)


async def timed(report: Report, body: Awaitable[None]) -> Report:
    started = time.monotonic()
    try:
        await body
    finally:
        report.seconds = time.monotonic() - started
    return report


async def timed_if_breakable(report: Report, target: Any, why: str,
                             body: Callable[[], Awaitable[None]]) -> Report:
    """``timed(report, body())`` on a stack this machine started (``target.can_break()``);
    elsewhere the scenario is reported skipped, saying what it would break (``why``)."""
    if not target.can_break():
        report.skipped = f"needs a stack started by chaos (--up): {why}"
        return report
    return await timed(report, body())


async def wait_until(predicate: Callable[[], bool], timeout_s: float,
                     interval_s: float = 0.05) -> float | None:
    """Seconds until ``predicate()`` held (polled), or None when it did not in time."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await asyncio.to_thread(predicate):
            return time.monotonic() - started
        await asyncio.sleep(interval_s)
    return None


def rounded(values: dict[str, float], digits: int = 3) -> dict[str, float]:
    return {k: round(v, digits) for k, v in values.items()}
