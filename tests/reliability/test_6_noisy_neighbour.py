"""Scenario 6: one tenant floods, another keeps its latency."""

import pytest

from tandem.loadtests.chaos import load
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


def test_a_flooding_tenant_leaves_another_its_latency(chaos_stack, plan):
    run_scenario(load.noisy_neighbour(chaos_stack, plan.load))
