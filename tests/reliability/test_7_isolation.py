"""Scenario 7: tenants cannot reach each other's sessions or caches, nor bypass the router."""

import pytest

from tandem.loadtests.chaos import isolation
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


def test_tenants_are_isolated_and_the_tiers_answer_only_the_router(chaos_stack, plan):
    run_scenario(isolation.run(chaos_stack, plan.isolation))
