"""Scenario 3: Redis frozen and killed under a conversational workload."""

import pytest

from tandem.loadtests.chaos import redis_faults
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


def test_requests_survive_a_frozen_and_a_restarted_redis(chaos_stack, plan):
    run_scenario(redis_faults.run(chaos_stack, plan.redis))
