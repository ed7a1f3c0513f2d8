"""Scenario 5: several times the stack's capacity."""

import pytest

from tandem.loadtests.chaos import load
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


# 144 clients of 64 tenants, 15 s deadline, 30 s, on the two cores the whole stack shares.
# What it took to pass on this machine: services freeze their startup objects out of the
# collector's reach (shared/memory.py: full collections paused the router and the cloud for
# 0.2-0.3 s, refusal p99 up to 0.76 s); the edge's llama.cpp runs one thread while the
# cloud keeps the cores busy (shared/cpu_share.py: with two, 17 of 20 admitted edge
# requests missed the deadline in CI); auto skips its prompt encoder when the edge is too
# busy to answer (router p99 for auto's refusals 128 -> 55 ms); and an answer the cloud
# began is finished on drafts when the cloud refuses to finish it alone, not cut.
def test_overload_is_shed_early_and_admitted_requests_keep_their_deadline(chaos_stack, plan):
    run_scenario(load.overload(chaos_stack, plan.load))
