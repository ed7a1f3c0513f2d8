"""Scenario 0: one request's values or size fail or slow only itself."""

import pytest

from tandem.loadtests.chaos import engines
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


def test_a_poisoned_or_huge_request_fails_alone(chaos_stack, plan, pids):
    run_scenario(engines.run(chaos_stack, plan.engines, pids["router"]))
