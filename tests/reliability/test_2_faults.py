"""Scenario 2: latency, a stall, a reset and kill -9 of each tier under streams."""

import json

import pytest

from tandem.loadtests.chaos import faults
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


def test_tier_faults_end_cleanly_and_the_router_recovers(chaos_stack, plan):
    run_scenario(faults.run(chaos_stack, plan.faults))


@pytest.mark.parametrize("fault", ["down", "stalled"])
def test_the_on_device_sdk_answers_degraded_from_the_edge_when_the_cloud_fails(chaos_stack,
                                                                                 fault):
    """The SDK's cloud link dead (connections refused) or hung (every byte held): a cloud
    or speculative call ends within its deadline with the edge's answer, marked degraded."""
    import time

    from tandem.edge.sdk import TandemClient
    from tandem.loadtests.chaos.proxy import FaultProxy
    from tandem.shared.process import free_port

    upstream = chaos_stack.cloud if fault == "stalled" else f"127.0.0.1:{free_port()}"
    proxy = FaultProxy(upstream).start()
    if fault == "stalled":
        proxy.stall()
    figures = {}
    try:
        with TandemClient(mode="on_device", cloud_address=proxy.address, threads=1) as client:
            for policy in ("cloud", "speculative"):
                started = time.monotonic()
                reply = client.generate("Give me one tip for sleeping well.", policy=policy,
                                        max_tokens=16, deadline_s=6)
                took = time.monotonic() - started
                figures[policy] = {"seconds": round(took, 2), "degraded": reply.degraded,
                                   "tiers": reply.tiers}
                assert reply.degraded and reply.text and set(reply.tiers) == {"edge"}
                assert took <= 6 + 1.0
    finally:
        proxy.close()
    print(json.dumps({"scenario": "sdk_offline_fallback", "fault": fault, "measured": figures}))
