"""`tandem loadtest --target openai` on the real stack: the same workload as the gRPC
target, streamed over the router's HTTP API, reports the same fields, and its counts
agree with the router's own Prometheus counters."""

from __future__ import annotations

import pytest

from tests.test_loadtest_stack import counters, delta, loadtest

pytestmark = pytest.mark.real_model


def test_openai_target_summary_agrees_with_router_counters(real_stack, tmp_path):
    router = real_stack["router"]
    before = counters(real_stack, "router")
    code, s = loadtest(tmp_path, f"127.0.0.1:{router.http_port}", "--target", "openai",
                       "--users", "2", "--requests", "6", "--max-tokens", "6",
                       "--policy", "edge=1,cloud=1,cascade=1,speculative=1", "--seed", "11")
    after = counters(real_stack, "router")
    assert code == 0 and (s["completed"], s["failed"], s["rejected"]) == (6, 0, 0)
    assert s["config"]["target"] == "openai"
    assert delta(before, after, "tandem_router_requests_total", code="OK") == 6
    assert delta(before, after, "tandem_http_requests_total", route="/v1/chat/completions",
                 status="200") == 6
    for policy, n in s["by_policy"].items():
        assert delta(before, after, "tandem_router_requests_total", code="OK", policy=policy) == n
    tokens = s["tier_share"]["token_counts"]
    assert delta(before, after, "tandem_router_output_tokens_total", tier="TIER_EDGE") == tokens["edge"]
    assert delta(before, after, "tandem_router_output_tokens_total", tier="TIER_CLOUD") == tokens["cloud"]
    assert tokens["edge"] + tokens["cloud"] == s["total_output_tokens"] > 0
    assert delta(before, after, "tandem_router_spec_draft_tokens_total") == \
        s["speculative"]["draft_tokens"]
    assert s["ttft_ms"]["p50"] is not None and s["e2el_ms"]["p50"] >= s["ttft_ms"]["p50"]
    assert s["router_time_ms"]["overhead"] is not None
