"""The reliability battery's stack: one ChaosStack (Redis with an append-only file, cloud
and edge behind fault proxies that answer only the router's internal token, a router with
API keys) for the whole battery; scenarios that kill or stop a service start it again.
Each test runs one scenario of tandem.loadtests.chaos in its CI size, prints its report
as one JSON line and fails on any broken promise."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from tandem.loadtests.chaos.run import Plan, pids_of
from tandem.loadtests.chaos.scenario import Report
from tandem.loadtests.chaos.stack import ChaosStack


@pytest.fixture(scope="session")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    stack = ChaosStack(workdir=tmp_path_factory.mktemp("chaos"))
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def plan() -> Plan:
    return Plan.ci()


@pytest.fixture
def pids(chaos_stack: ChaosStack) -> dict[str, int]:
    return pids_of(chaos_stack)


def run_scenario(scenario: Coroutine[Any, Any, Report]) -> Report:
    """Run it, print its JSON line, and fail the test on any broken promise."""
    report = asyncio.run(scenario)
    report.print()
    assert not report.skipped, report.skipped
    assert not report.failures, "\n".join(report.failures)
    return report
