"""The reliability fixes without models: unambiguous state keys, whole-name checks,
malformed protobuf refused as INVALID_ARGUMENT, the drain gate, the edge answer kept when
the cloud is down, a labelled fail-open, Redis writes that are applied once and survive a
restarted server, per-tenant concurrency caps (fast; tests/reliability runs the real
stack)."""

import asyncio
import os

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from tandem.router.config import RouterConfig
from tandem.router.core import RouterCore
from tandem.router.metrics import RouterMetrics
from tandem.router.policies.base import Outcome
from tandem.router.policies.single_tier import EdgePolicy
from tandem.router.policies.spill import CLOUD_UNAVAILABLE, or_keep_edge_answer
from tandem.router.state.base import Completion
from tandem.router.state.memory import MemoryStateStore
from tandem.router.state.redis_store import RedisStateStore
from tandem.router.state.resilient import ResilientStateStore
from tandem.router.tenancy import TenantLimiter
from tandem.shared.deadlines import Deadline
from tandem.shared.drain import DrainGate
from tandem.shared.errors import (DeadlineExceeded, ErrorMappingInterceptor, InvalidArgument,
                                  ResourceExhausted, Unavailable)
from tandem.shared.process import RedisProcess, free_port
from tandem.v1 import common_pb2, router_pb2


def run(coro):
    return asyncio.run(coro)


def test_state_keys_do_not_collide_across_tenants_and_sessions():
    key = RedisStateStore._key
    assert key("session", "a", "b:c") != key("session", "a:b", "c")
    assert key("session", "", "x") != key("session", "-", "x")
    assert key("budget", "a") != key("budget", "a:0")


def test_colliding_names_are_separate_sessions_in_redis(redis_server):
    async def scenario():
        store = RedisStateStore(redis_server.url, timeout_s=2.0)
        await store.append("a", "b:c", [{"role": "user", "content": "first"}], 60)
        await store.append("a:b", "c", [{"role": "user", "content": "second"}], 60)
        await store.append("", "s", [{"role": "user", "content": "empty"}], 60)
        got = [await store.history(*pair) for pair in (("a", "b:c"), ("a:b", "c"), ("-", "s"))]
        await store.close()
        return got

    first, second, dash = run(scenario())
    assert [t["content"] for t in first] == ["first"]
    assert [t["content"] for t in second] == ["second"]
    assert dash == []  # the empty tenant is not the tenant "-"


class EdgeOnly:
    """Tiers whose edge streams two tokens (a router core without models)."""

    async def edge_stream(self, request, deadline, timings):
        for token in (11, 12):
            yield common_pb2.TierGenerateChunk(token_ids=[token], text=f"t{token} ")
        yield common_pb2.TierGenerateChunk(finish_reason=common_pb2.FINISH_REASON_STOP)


def core_with(state, tokenizer) -> RouterCore:
    config = RouterConfig(default_policy="edge")
    return RouterCore(config, tokenizer, EdgeOnly(), state, {"edge": EdgePolicy()},  # type: ignore[arg-type]
                      RouterMetrics(CollectorRegistry()))


async def answer(core: RouterCore, **fields) -> router_pb2.GenerateChunk:
    chunks = [c async for c in core.stream(router_pb2.GenerateRequest(prompt="hi", **fields),
                                           Deadline(30))]
    return chunks[-1]


@pytest.mark.parametrize("field", ["session_id", "tenant"])
@pytest.mark.parametrize("value", ["a\n", "a\nb", "a b", "x" * 129])
def test_names_must_match_whole(smollm2_tokenizer, field, value):
    core = core_with(MemoryStateStore(), smollm2_tokenizer)
    with pytest.raises(InvalidArgument, match=field):
        run(answer(core, **{field: value}))


def test_a_fail_open_answer_says_so(smollm2_tokenizer):
    dead = ResilientStateStore(RedisStateStore("redis://127.0.0.1:1/0", 0.2), lambda op: None)
    final = run(answer(core_with(dead, smollm2_tokenizer), session_id="s1"))
    assert final.done and final.decision.state_degraded
    healthy = run(answer(core_with(MemoryStateStore(), smollm2_tokenizer), session_id="s1"))
    assert not healthy.decision.state_degraded


async def refused_escalation(error):
    raise error
    yield  # an async generator that fails before its first piece


@pytest.mark.parametrize("error", [Unavailable("cloud: down"), DeadlineExceeded("late")])
def test_the_edge_answer_is_kept_when_the_cloud_is_down_or_late(error):
    edge = common_pb2.TierGenerateResponse(text="edge says", token_ids=[5, 6],
                                           finish_reason=common_pb2.FINISH_REASON_STOP)
    outcome = Outcome("cascade")
    outcome.decision.escalated = True

    async def collect():
        return [p async for p in or_keep_edge_answer(refused_escalation(error), outcome, edge)]

    pieces = run(collect())
    assert [p.text for p in pieces] == ["edge says"]
    assert outcome.decision.spilled and outcome.decision.spill_reason == CLOUD_UNAVAILABLE
    assert not outcome.decision.escalated and outcome.usage.edge_tokens == 2


async def serve_with(interceptors, handlers):
    server = grpc.aio.server(interceptors=interceptors)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Slow", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_malformed_protobuf_is_invalid_argument_not_unknown():
    async def scenario():
        server, address = await serve_with([ErrorMappingInterceptor()], {})
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary("/grpc.health.v1.Health/Check")(b"\xff\xff\xff")
            return caught.value
        finally:
            await server.stop(0)

    error = run(scenario())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "protobuf" in error.details() and "class" not in error.details()


def test_health_watch_streams_through_the_services_interceptors():
    """The router's replica health watch uses Watch; the interceptors once broke it."""
    async def scenario():
        server, address = await serve_with([DrainGate("test"), ErrorMappingInterceptor()], {})
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(), timeout=5)
                first = await watch.read()
                watch.cancel()
            return first.status
        finally:
            await server.stop(0)

    assert run(scenario()) == health_pb2.HealthCheckResponse.SERVING


def test_a_draining_server_refuses_new_calls_and_lets_running_ones_finish():
    async def slow(request, context):
        for i in range(5):
            await asyncio.sleep(0.05)
            yield bytes([i])

    async def scenario():
        gate = DrainGate("test")
        server, address = await serve_with(
            [gate], {"Stream": grpc.unary_stream_rpc_method_handler(slow)})
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                call = channel.unary_stream("/t.Slow/Stream")(b"")
                first = await call.read()
                gate.close()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await channel.unary_stream("/t.Slow/Stream")(b"").read()
                rest = []
                while (message := await call.read()) is not grpc.aio.EOF:
                    rest.append(message)
                idle = await gate.wait_idle(5)
                check = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5)
            return first, rest, refused.value.code(), idle, check
        finally:
            await server.stop(0)

    first, rest, code, idle, check = run(scenario())
    assert first + b"".join(rest) == bytes(range(5))
    assert code == grpc.StatusCode.UNAVAILABLE and idle
    assert check.status  # health checks are still answered while draining


@pytest.fixture
def own_redis(tmp_path):
    server = RedisProcess(free_port(), tmp_path, durable=True)
    server.wait_ready()
    yield server
    server.stop()


def test_a_restarted_redis_does_not_fail_the_next_calls(own_redis):
    """Pooled connections to the old server are retried on fresh ones (they used to fail
    once each and report a spurious outage)."""
    async def scenario():
        store = RedisStateStore(own_redis.url, timeout_s=1.0)
        await asyncio.gather(*(store.history("t", f"s{i}") for i in range(6)))
        own_redis.proc.kill()
        own_redis.proc.wait()
        own_redis.restart()
        own_redis.wait_ready()
        results = await asyncio.gather(*(store.history("t", f"s{i}") for i in range(6)),
                                       return_exceptions=True)
        await store.close()
        return results

    assert all(r == [] for r in run(scenario()))


def test_a_write_is_applied_once_and_replayed_turns_once(own_redis):
    """The same completion twice (a late execution and a replay) stores its turn once;
    turns kept during an outage are replayed once even with concurrent requests."""
    turn = [{"role": "user", "content": "hello"}]

    async def scenario():
        store = ResilientStateStore(RedisStateStore(own_redis.url, timeout_s=0.3),
                                    lambda op: None, retry_s=0.1)
        done = Completion(tenant="t", policy="edge", stats={"requests": 1}, session_id="once",
                          turns=turn, session_ttl_s=60, write_id="w1")
        await store.complete(done)
        await store.primary.complete(done)
        await store.primary.append("t", "once", turn, 60, "w1")
        os.kill(own_redis.proc.pid, 19)  # SIGSTOP: writes go local
        try:
            for i in range(3):
                await store.complete(Completion(
                    tenant="t", policy="edge", stats={}, session_id="down",
                    turns=[{"role": "user", "content": str(i)}], session_ttl_s=60,
                    write_id=f"d{i}"))
        finally:
            os.kill(own_redis.proc.pid, 18)  # SIGCONT
        await asyncio.sleep(0.2)
        await asyncio.gather(*(store.history("t", "x") for _ in range(8)))
        got = await store.primary.history("t", "once"), await store.primary.history("t", "down")
        await store.close()
        return got

    once, down = run(scenario())
    assert once == turn
    assert [t["content"] for t in down] == ["0", "1", "2"]


def test_children_run_in_their_own_process_group(own_redis):
    """A Ctrl-C in the terminal reaches only `tandem up`, which stops them in order."""
    assert os.getpgid(own_redis.proc.pid) == own_redis.proc.pid != os.getpgid(0)


def test_a_tenant_at_its_concurrency_cap_is_refused_and_others_are_not():
    limiter = TenantLimiter(2)
    with limiter.hold("a"), limiter.hold("a"):
        with pytest.raises(ResourceExhausted) as refused:
            with limiter.hold("a"):
                pass
        assert refused.value.retry_after_s and refused.value.retry_after_s > 0
        with limiter.hold("b"):
            assert limiter.in_flight("b") == 1
    with limiter.hold("a"):
        assert limiter.in_flight("a") == 1
    assert limiter.in_flight("a") == 0
    with TenantLimiter(0).hold("a"), TenantLimiter(0).hold("a"):
        pass  # 0: no cap


def test_a_child_dies_with_the_process_that_started_it(tmp_path):
    """spawn() children get SIGTERM when their parent dies (no orphaned services)."""
    import subprocess
    import sys
    import time

    script = ("from tandem.shared.process import spawn\n"
              "child = spawn(['sleep', '60'])\n"
              "print(child.pid, flush=True)\n")
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30, check=True)
    pid = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("flag, value", [("--max-tokens", "2147483648"), ("--max-tokens", "0"),
                                         ("--seed", "-1"), ("--seed", str(2 ** 64))])
def test_ask_refuses_out_of_range_numbers_as_a_usage_error(flag, value, capsys):
    """`tandem ask --max-tokens 2147483648` and `--seed -1` printed a traceback (the
    request's protobuf field overflowed); they are usage errors naming the flag."""
    import argparse

    from tandem.shared.cli import ask

    parser = argparse.ArgumentParser(prog="tandem")
    ask.add_parser(parser.add_subparsers())
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["ask", flag, value, "hi"])
    assert exited.value.code == 2
    assert f"argument {flag}: must be in" in capsys.readouterr().err
