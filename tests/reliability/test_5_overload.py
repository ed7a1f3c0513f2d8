"""Scenario 5: several times the stack's capacity."""

import pytest

from tandem.loadtests.chaos import load
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


# 144 clients of 64 tenants, 15 s deadline, 30 s, on the two cores the whole stack shares.
# Before the services froze their startup objects out of the collector's reach
# (shared/grpc_server.py), a full collection paused the router or the cloud for 0.2-0.3 s
# a few times a run, and the refusals caught behind one took up to 0.76 s at p99 (limit
# 0.5 s). After (s15): refusal p99 0.15-0.37 s in all five runs. What still fails, in
# CI's run of s15 (slo_met 0.942 against 0.95), is the edge: 17 of its 20 admitted
# requests missed their deadline (the other 274 did not); in a local run their first
# chunks came 3.4-4.5 s after sending. The likely cause: its two llama.cpp threads meet at a barrier after each op of a
# token, and beside the cloud's two busy threads on the same two cores a barrier waits for
# a descheduled peer. With TANDEM_EDGE_THREADS=1 (no barriers) one run gave 33 edge
# answers in time and slo_met 1.0. Tiers on their own cores, or an edge that drops to one
# thread while the machine is busy, would meet it. The test runs and prints its figures.
@pytest.mark.xfail(reason="on two shared cores the edge's two llama.cpp threads convoy "
                          "behind the cloud's and its admitted requests miss their "
                          "deadline (see the comment above)",
                   strict=False)
def test_overload_is_shed_early_and_admitted_requests_keep_their_deadline(chaos_stack, plan):
    run_scenario(load.overload(chaos_stack, plan.load))
