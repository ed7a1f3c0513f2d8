"""Scenario 6: one tenant floods, another keeps its latency."""

import asyncio

import pytest

from tandem.loadtests.chaos import load
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


def test_a_flooding_tenant_leaves_another_its_latency(chaos_stack, plan):
    # The promise is a ratio of two medians of a few requests on two shared cores whose
    # speed drifts: measured in two blocks apart, a battery run gave 1.70x and 1.83x (the
    # alone block fell in a fast phase, 354 ms against 500 ms a minute later). The scenario
    # now alternates alone and beside the flood in four rounds (1.31-1.41x in four runs).
    # A latency miss is still measured once more (both runs' figures are printed); a
    # broken promise shows in both, noise rarely does. Failed requests fail at once.
    first = asyncio.run(load.noisy_neighbour(chaos_stack, plan.load))
    if first.failures and all("latency" in failure for failure in first.failures):
        first.print()
        run_scenario(load.noisy_neighbour(chaos_stack, plan.load))
    else:
        first.print()
        assert not first.skipped, first.skipped
        assert not first.failures, "\n".join(first.failures)
