import asyncio
import time

import pytest

from tandem.router.state import MemoryStateStore, RedisStateStore, create_state_store
from tandem.shared.errors import Unavailable


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=["memory", "redis"])
def store_factory(request, redis_server):
    return (lambda: MemoryStateStore()) if request.param == "memory" else (
        lambda: RedisStateStore(redis_server.url))


def test_sessions_append_in_order_and_are_scoped_by_tenant(store_factory):
    async def scenario():
        store = store_factory()
        sid = f"s-{time.monotonic_ns()}"
        await store.append("acme", sid, [{"role": "user", "content": "hi"}], ttl_s=60)
        await store.append("acme", sid, [{"role": "assistant", "content": "hello"}], ttl_s=60)
        history = await store.history("acme", sid)
        other = await store.history("globex", sid)
        await store.close()
        return history, other

    history, other = run(scenario())
    assert [t["content"] for t in history] == ["hi", "hello"]
    assert other == []


def test_sessions_expire(store_factory):
    async def scenario():
        store = store_factory()
        sid = f"exp-{time.monotonic_ns()}"
        await store.append("", sid, [{"role": "user", "content": "x"}], ttl_s=0.2)
        await asyncio.sleep(0.4)
        history = await store.history("", sid)
        await store.close()
        return history

    assert run(scenario()) == []


def test_redis_down_is_unavailable_quickly():
    async def scenario():
        store = RedisStateStore("redis://127.0.0.1:1/0")  # nothing listens on port 1
        started = time.monotonic()
        with pytest.raises(Unavailable, match="state store unavailable"):
            await store.history("", "s")
        await store.close()
        return time.monotonic() - started

    assert run(scenario()) < 5.0


def test_state_url_is_validated():
    with pytest.raises(ValueError):
        create_state_store("postgres://x")
