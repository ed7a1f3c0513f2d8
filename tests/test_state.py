"""Router state: the same behaviour from the in-memory store and real Redis; atomic
limits under concurrency; serving through a Redis outage without losing turns."""

import asyncio
import time

import pytest

from tandem.router.controller import ThresholdController
from tandem.router.state import Limits, create_state_store
from tandem.router.state.redis_store import RedisStateStore
from tandem.router.state.resilient import ResilientStateStore
from tandem.shared.errors import Unavailable
from tandem.shared.process import RedisProcess, free_port


def run(coro):
    return asyncio.run(coro)


def unique(name):
    return f"{name}-{time.monotonic_ns()}"


def test_sessions_append_in_order_and_are_scoped_by_tenant(make_store):
    async def scenario():
        store, sid = make_store(), unique("s")
        await store.append("acme", sid, [{"role": "user", "content": "hi"}], ttl_s=60)
        await store.append("acme", sid, [{"role": "assistant", "content": "hello"}], ttl_s=60)
        history, other = await store.history("acme", sid), await store.history("globex", sid)
        await store.close()
        return history, other

    history, other = run(scenario())
    assert [t["content"] for t in history] == ["hi", "hello"]
    assert other == []


def test_sessions_expire(make_store):
    async def scenario():
        store, sid = make_store(), unique("exp")
        await store.append("", sid, [{"role": "user", "content": "x"}], ttl_s=0.2)
        await asyncio.sleep(0.4)
        history = await store.history("", sid)
        await store.close()
        return history

    assert run(scenario()) == []


def test_rate_limit_allows_burst_then_gives_retry_time(make_store):
    async def scenario():
        store, tenant = make_store(), unique("t")
        results = [await store.take_request(tenant, 0.5, 3) for _ in range(5)]
        await store.close()
        return results

    results = run(scenario())
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert all(1.0 < r.retry_after_s <= 2.0 for r in results[3:])


def test_shared_rate_limit_across_replicas(redis_server):
    async def scenario():
        stores = [RedisStateStore(redis_server.url, timeout_s=2.0) for _ in range(5)]
        tenant = unique("t")
        results = await asyncio.gather(*(stores[i % 5].take_request(tenant, 0.01, 10)
                                         for i in range(50)))
        for store in stores:
            await store.close()
        return results

    results = run(scenario())
    assert sum(r.allowed for r in results) == 10
    assert all(r.retry_after_s > 1 for r in results if not r.allowed)


def test_token_budget_reserves_all_or_nothing_and_refunds(make_store):
    async def scenario():
        store, tenant = make_store(), unique("b")
        first = await store.reserve_tokens(tenant, 60, budget=100, window_s=60)
        second = await store.reserve_tokens(tenant, 60, budget=100, window_s=60)
        await store.refund_tokens(tenant, 50, window_s=60)  # the first used only 10
        third = await store.reserve_tokens(tenant, 60, budget=100, window_s=60)
        await store.close()
        return first, second, third

    first, second, third = run(scenario())
    assert first.allowed and not second.allowed and third.allowed
    assert 0 < second.retry_after_s <= 60


def test_withdrawn_admission_gives_back_its_request_and_tokens(make_store):
    async def scenario():
        store, tenant = make_store(), unique("w")
        limits = Limits(tenant, rate_per_s=0.001, burst=1, tokens=80, budget=100, window_s=60)
        first = await store.admit(limits)
        await store.unadmit(limits)  # e.g. the session's history put it over the context
        again = await store.admit(limits)  # the burst of 1 and the budget are whole again
        refused = await store.admit(limits)
        await store.close()
        return first, again, refused

    first, again, refused = run(scenario())
    assert first.allowed and again.allowed and not refused.allowed


def test_response_cache_is_per_tenant(make_store):
    async def scenario():
        store, key = make_store(), unique("k")
        await store.cache_put("a", key, b"answer", ttl_s=60)
        got = await store.cache_get("a", key), await store.cache_get("b", key)
        await store.close()
        return got

    assert run(scenario()) == (b"answer", None)


def test_budget_controller_converges_to_target_rate(make_store):
    """Scores ~ U(0, 1): the threshold must settle near the target quantile and the
    realised escalation rate near the target."""
    async def scenario():
        import numpy as np

        store = make_store()
        if isinstance(store, RedisStateStore):
            await store._redis.delete("tandem:v2:threshold")
        controller = ThresholdController(store, initial=0.9, target_rate=0.25, step=0.02)
        rng = np.random.default_rng(0)
        escalated = []
        for score in rng.random(1500):
            threshold = await controller.current()
            escalated.append(score < threshold)
            await controller.observe(score < threshold)
        final = await controller.current()
        await store.close()
        return final, float(np.mean(escalated[-500:]))

    threshold, late_rate = run(scenario())
    assert threshold == pytest.approx(0.25, abs=0.07)
    assert late_rate == pytest.approx(0.25, abs=0.06)


def test_leniency_controller_steers_the_cloud_pass_share_to_its_target(make_store):
    """speculative-cascade's τ: a request's cloud share rises with τ (here 0.1 + 0.3 τ,
    with noise); the controller must settle τ where the share meets the target, beside
    the cascade threshold (a separate shared value), and never hand out less than its
    floor."""
    async def scenario():
        import numpy as np

        store = make_store()
        if isinstance(store, RedisStateStore):
            await store._redis.delete("tandem:v2:leniency", "tandem:v2:threshold")
        leniency = ThresholdController(store, initial=1.0, target_rate=0.19, step=0.05,
                                       name="leniency", floor=0.01)
        cascade = ThresholdController(store, initial=0.4, target_rate=0.5)
        rng = np.random.default_rng(0)
        shares = []
        for _ in range(1500):
            tau = await leniency.current()
            shares.append(float(np.clip(0.1 + 0.3 * tau + rng.normal(0, 0.05), 0, 1)))
            await leniency.observe(shares[-1])
        settled, threshold = await leniency.current(), await cascade.current()
        floor = ThresholdController(store, initial=1.0, target_rate=0.05, step=1.0,
                                    name="leniency", floor=0.01)
        await floor.observe(1.0)  # far over budget: the shared value hits 0
        floored = await floor.current()
        await store.close()
        return settled, float(np.mean(shares[-500:])), threshold, floored

    tau, late_share, threshold, floored = run(scenario())
    assert tau == pytest.approx(0.3, abs=0.1)
    assert late_share == pytest.approx(0.19, abs=0.02)
    assert threshold == 0.4  # the cascade's threshold is its own value
    assert floored == 0.01


def test_redis_down_is_unavailable_quickly():
    async def scenario():
        store = RedisStateStore("redis://127.0.0.1:1/0")  # nothing listens on port 1
        with pytest.raises(Unavailable, match="state store unavailable"):
            await store.history("", "s")
        await store.close()

    run(scenario())


def test_resilient_store_serves_through_outage_and_replays_turns(tmp_path):
    """Redis killed mid-run: operations keep working locally (counted), and the turns
    written meanwhile reach Redis once it is back."""
    port = free_port()
    redis = RedisProcess(port, tmp_path)
    redis.wait_ready()
    fallbacks = []
    store = ResilientStateStore(RedisStateStore(redis.url, timeout_s=0.2), fallbacks.append,
                                retry_s=0.2)

    async def during_outage():
        await store.append("t", "s", [{"role": "user", "content": "before"}], 60)
        redis.stop()
        await store.append("t", "s", [{"role": "user", "content": "during"}], 60)
        allowed = await store.take_request("t", 10, 5)
        return await store.history("t", "s"), allowed

    try:
        history, allowed = run(during_outage())
        assert fallbacks and store.degraded and allowed.allowed
        assert [t["content"] for t in history] == ["during"]  # local view while down
        revived = RedisProcess(port, tmp_path)
        revived.wait_ready()

        async def after_recovery():
            await asyncio.sleep(0.3)  # past the circuit's retry time
            return await store.history("t", "s")

        # Redis restarted empty (no persistence): the replayed turn is what it holds.
        assert [t["content"] for t in run(after_recovery())] == ["during"]
        assert not store.degraded
        revived.stop()
    finally:
        redis.stop()


def test_state_url_is_validated():
    with pytest.raises(ValueError):
        create_state_store("postgres://x")
