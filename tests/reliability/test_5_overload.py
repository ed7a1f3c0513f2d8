"""Scenario 5: several times the stack's capacity."""

import pytest

from tandem.loadtests.chaos import load
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


# 144 clients of 64 tenants, 15 s deadline, 30 s, on the two cores the whole stack shares.
# Before the services froze their startup objects out of the collector's reach
# (shared/grpc_server.py), a full collection paused the router or the cloud for 0.2-0.3 s
# a few times a run, and the refusals caught behind one took up to 0.76 s at p99 (limit
# 0.5 s), and the test was marked as an expected failure. After (s15, alone): refusal p99
# 0.15-0.37 s, slo_met 0.968-0.98. What remains near the limits: the first burst of 144
# requests at once (its refusals take up to ~0.6 s), and the edge, whose two llama.cpp
# threads share the cores with the cloud's full batch and finish few requests in time.
def test_overload_is_shed_early_and_admitted_requests_keep_their_deadline(chaos_stack, plan):
    run_scenario(load.overload(chaos_stack, plan.load))
