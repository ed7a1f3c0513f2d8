"""Router features on the real stack: admission limits with retry information, the
response cache, `auto` (escalations decoded speculatively, lossless), and serving through
a Redis outage. A second router is started with these features switched on."""

from __future__ import annotations

import time

import grpc
import pytest

from tandem.shared.cli.ask import build_request
from tandem.shared.process import RedisProcess, free_port
from tandem.v1 import common_pb2, router_pb2_grpc
from tests.conftest import start_services

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    server = RedisProcess(free_port(), tmp_path_factory.mktemp("router-redis"))
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def feature_router(real_stack, own_redis, tmp_path_factory):
    """Rate limit 0.01 req/s with burst 3 (refills too slowly to matter mid-test), a
    300-token budget per hour (a fixed window: a per-minute one restarted mid-test now and
    then, and a test expecting the budget spent found it whole), response cache on, cascade
    threshold 1.0 (auto always escalates), and its own Redis (killed by the last test)."""
    router = start_services(tmp_path_factory.mktemp("router2"), [("router", [
        "--cloud-address", real_stack["cloud"].address,
        "--edge-address", real_stack["edge"].address, "--state", own_redis.url,
        "--rate-limit-rps", "0.01", "--rate-limit-burst", "3", "--token-budget", "300",
        "--token-budget-window-seconds", "3600",
        "--response-cache-seconds", "600", "--cascade-threshold", "1.0",
        "--scorer", "mean_prob",  # no embedding model in cascade (the latency test relies on it)
        # auto always tries the edge first and speculation never backs off, so what the
        # tests check does not depend on the prompt router or the machine's load.
        "--auto-skip-edge-below", "0", "--no-adaptive-draft"])])[0]
    channel = grpc.insecure_channel(router.address)
    yield router, router_pb2_grpc.RouterStub(channel)
    channel.close()
    router.stop()


def ask(stub, prompt, **params):
    return stub.Generate(build_request(prompt, **params), timeout=300)


def test_rate_limit_rejects_with_retry_after(feature_router):
    _, stub = feature_router
    tenant = f"rl{time.monotonic_ns()}"
    for _ in range(3):
        ask(stub, "Say hi.", policy="edge", max_tokens=2, tenant=tenant)
    with pytest.raises(grpc.RpcError) as err:
        ask(stub, "Say hi.", policy="edge", max_tokens=2, tenant=tenant)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit" in err.value.details()
    trailers = dict(err.value.trailing_metadata())
    assert int(trailers["retry-after-ms"]) > 1000


def test_a_session_turn_refused_after_admission_gives_its_admission_back(feature_router):
    """A session's history is read beside admission; a turn that then proves too long for
    the context window is refused and withdraws its admission (no state changes)."""
    _, stub = feature_router
    tenant = f"wd{time.monotonic_ns()}"
    too_long = "word " * 9000  # over the 8192-token context window
    with pytest.raises(grpc.RpcError) as err:
        ask(stub, too_long, policy="edge", max_tokens=200, tenant=tenant, session="s1")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("prompt")
    for _ in range(2):
        ask(stub, "Say hi.", policy="edge", max_tokens=2, tenant=tenant)
    # Only with the burst's third request and the 200 reserved tokens given back:
    ask(stub, "Say hi.", policy="edge", max_tokens=290, tenant=tenant)
    with pytest.raises(grpc.RpcError) as err:
        ask(stub, "Say hi.", policy="edge", max_tokens=2, tenant=tenant)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Over a limit and too long at once: the client's mistake is what it hears.
    with pytest.raises(grpc.RpcError) as err:
        ask(stub, too_long, policy="edge", max_tokens=200, tenant=tenant, session="s1")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_token_budget_reserves_max_tokens_and_refunds_the_rest(feature_router):
    _, stub = feature_router
    tenant = f"tb{time.monotonic_ns()}"
    first = ask(stub, "Name a colour.", policy="edge", max_tokens=100, tenant=tenant)
    used = first.usage.edge_tokens
    # After the refund exactly `used` tokens of 300 are spent.
    ask(stub, "Name a colour.", policy="edge", max_tokens=300 - used, tenant=tenant,
        temperature=0.5)
    with pytest.raises(grpc.RpcError) as err:
        ask(stub, "Name a colour.", policy="edge", max_tokens=300, tenant=tenant)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "token budget" in err.value.details()


def test_response_cache_hits_within_a_tenant_only(feature_router):
    _, stub = feature_router
    tenant = f"c{time.monotonic_ns()}"
    first = ask(stub, "What is two plus two?", policy="edge", max_tokens=12, tenant=tenant)
    again = ask(stub, "What is two plus two?", policy="edge", max_tokens=12, tenant=tenant)
    other = ask(stub, "What is two plus two?", policy="edge", max_tokens=12,
                tenant=tenant + "x")
    assert again.decision.cached and again.text == first.text
    assert again.usage.edge_tokens == 0  # no model work
    assert not first.decision.cached and not other.decision.cached


def test_auto_escalation_is_lossless_and_reuses_the_edge_answer(real_stack, feature_router):
    _, stub = feature_router
    prompt = "Describe a sunrise over the sea in one sentence."
    tenant = f"a{time.monotonic_ns()}"
    auto = ask(stub, prompt, policy="auto", max_tokens=32, temperature=0.0, tenant=tenant)
    cloud = real_stack.router.Generate(build_request(prompt, policy="cloud", max_tokens=32,
                                                     temperature=0.0), timeout=300)
    assert auto.decision.escalated  # threshold 1.0: every edge answer is escalated
    assert auto.text == cloud.text
    assert auto.usage.edge_generated_tokens > 0
    # The escalated edge answer was verified as a draft: fewer cloud passes than tokens.
    produced = auto.usage.edge_tokens + auto.usage.cloud_tokens
    assert auto.usage.cloud_forward_passes < produced
    assert 0 < auto.usage.accepted_draft_tokens <= auto.usage.draft_tokens
    assert {s.tier for s in auto.segments} <= {common_pb2.TIER_EDGE, common_pb2.TIER_CLOUD}


@pytest.mark.parametrize("policy", ["edge", "cloud", "cascade", "speculative", "auto"])
def test_router_latency_parts_are_filled_and_within_the_overhead(feature_router, policy):
    """Two turns of one session: history read and written, admission and statistics in
    Redis, so state time is never zero; the parts never exceed what the router spent
    outside the tiers."""
    _, stub = feature_router
    tenant = f"lat{time.monotonic_ns()}"
    for prompt in ("Name a fruit.", "And a vegetable?"):
        t = ask(stub, prompt, policy=policy, max_tokens=4, temperature=0.0, tenant=tenant,
                session="s1").timings
        assert t.state_ns > 0 and t.decision_ns > 0
        assert t.state_ns + t.decision_ns + t.scoring_ns <= t.overhead_ns <= t.total_ns
        # Only auto runs an embedding model here (the shipped prompt router; the cascade
        # scorer is the mean token probability).
        assert (t.scoring_ns > 0) == (policy == "auto")


def test_cached_answers_carry_router_timings(feature_router):
    router, stub = feature_router
    tenant = f"lc{time.monotonic_ns()}"
    before = metric_sum(router.metrics_port, "tandem_router_added_latency_seconds_count")
    ask(stub, "What colour is the sky?", policy="edge", max_tokens=6, tenant=tenant)
    again = ask(stub, "What colour is the sky?", policy="edge", max_tokens=6, tenant=tenant)
    assert again.decision.cached
    t = again.timings
    assert t.state_ns > 0 and t.decision_ns > 0 and t.edge_ns == 0 and t.cloud_ns == 0
    assert t.state_ns + t.decision_ns <= t.overhead_ns == t.total_ns
    # One observation per part (state, decision, scoring, added) per request.
    after = metric_sum(router.metrics_port, "tandem_router_added_latency_seconds_count")
    assert after - before == 8


def test_requests_are_served_while_redis_is_down(feature_router, own_redis):
    router, stub = feature_router
    tenant = f"r{time.monotonic_ns()}"
    ask(stub, "Hello!", policy="edge", max_tokens=4, tenant=tenant, session="s1")
    own_redis.stop()
    reply = ask(stub, "Hello again!", policy="edge", max_tokens=4, tenant=tenant, session="s1")
    assert reply.text
    port = router.metrics_port
    fallbacks = metric_sum(port, "tandem_router_state_fallbacks_total")
    assert fallbacks > 0


def metric_sum(port, name):
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M))
