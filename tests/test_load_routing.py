"""Back-pressure and load-aware routing on the real stack: an edge with one slot and room
for one waiting request, behind a router whose edge wait budget is short. A saturated edge
refuses the `edge` policy with RESOURCE_EXHAUSTED and a retry-after (storing nothing),
and the other policies spill to the cloud (decision, metric); an idle edge does not."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import grpc
import pytest

from tandem.router.state.redis_store import RedisStateStore
from tandem.shared.cli.ask import build_request
from tandem.v1 import common_pb2, edge_pb2_grpc, router_pb2_grpc
from tests.conftest import start_services

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def small_edge_stack(real_stack, redis_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("small-edge")
    (edge,) = start_services(workdir, [("edge", ["--slots", "1", "--max-waiting", "1"])])
    (router,) = start_services(workdir, [("router", [
        "--cloud-address", real_stack["cloud"].address, "--edge-address", edge.address,
        "--state", redis_server.url, "--token-budget", "500",
        "--token-budget-window-seconds", "3600", "--edge-wait-budget-ms", "200",
        "--auto-skip-edge-below", "0"])])
    channel = grpc.insecure_channel(router.address)
    yield edge, router, router_pb2_grpc.RouterStub(channel)
    channel.close()
    router.stop()
    edge.stop()


def edge_load(edge) -> common_pb2.TierLoad:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(edge.address) as channel:
        return edge_pb2_grpc.EdgeStub(channel).Load(common_pb2.LoadRequest(), timeout=5)


def read_until_cancelled(call) -> None:  # type: ignore[no-untyped-def]
    try:
        for _ in call:
            pass
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:  # __exit__ cancels it; nothing else
            raise


class Saturated:
    """Two long edge answers in the background: one on the slot, one waiting."""

    def __init__(self, edge, stub) -> None:  # type: ignore[no-untyped-def]
        self.edge, self.stub, self.calls = edge, stub, []

    def __enter__(self) -> Saturated:
        for i in range(2):
            # a raw numbered list: the model goes on counting, it does not stop early
            request = build_request(", ".join(str(n) for n in range(1, 9)) + ",",
                                    policy="edge", max_tokens=400, temperature=0.0,
                                    tenant=f"busy{i}")
            request.raw_prompt = True
            call = self.stub.GenerateStream(request, timeout=120)
            self.calls.append(call)
            threading.Thread(target=read_until_cancelled, args=(call,), daemon=True).start()
            deadline = time.monotonic() + 30
            while edge_load(self.edge).running + edge_load(self.edge).queued < i + 1:
                assert time.monotonic() < deadline, "the edge did not fill up"
                time.sleep(0.02)
        time.sleep(0.3)  # the router's load reading catches up (it polls every 100 ms)
        return self

    def __exit__(self, *exc: object) -> None:
        for call in self.calls:
            call.cancel()
        while edge_load(self.edge).running or edge_load(self.edge).queued:
            time.sleep(0.05)


def spills(router, reason: str) -> float:  # type: ignore[no-untyped-def]
    text = urllib.request.urlopen(f"http://127.0.0.1:{router.metrics_port}/metrics",
                                  timeout=5).read().decode()
    return sum(float(v) for v in re.findall(
        rf'^tandem_router_spills_total{{[^}}]*reason="{reason}"[^}}]*}} (\S+)$', text, re.M))


def test_a_full_edge_refuses_with_retry_after_and_stores_nothing(small_edge_stack,
                                                                  redis_server):
    edge, router, stub = small_edge_stack
    tenant, session = f"full{time.monotonic_ns()}", "s1"
    with Saturated(edge, stub):
        with pytest.raises(grpc.RpcError) as refused:
            stub.Generate(build_request("Say hi.", policy="edge", max_tokens=300,
                                        tenant=tenant, session=session), timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(refused.value.trailing_metadata() or ())
    assert int(trailers["retry-after-ms"]) > 0
    import asyncio

    store = RedisStateStore(redis_server.url, timeout_s=2.0)
    assert asyncio.run(store.history(tenant, session)) == []  # no session turn
    # the budget (500 tokens) is whole: a request reserving 300 more is admitted
    reply = stub.Generate(build_request("Say hi.", policy="edge", max_tokens=300,
                                        tenant=tenant), timeout=60)
    assert reply.usage.edge_tokens > 0


def test_a_saturated_edge_spills_to_the_cloud_and_an_idle_one_does_not(small_edge_stack):
    edge, router, stub = small_edge_stack
    idle = stub.Generate(build_request("Name a colour.", policy="cascade", max_tokens=8,
                                       temperature=0.0), timeout=60)
    assert not idle.decision.spilled and idle.usage.edge_generated_tokens > 0
    # The router spills on its reading of the edge's load ("edge_busy"), or, when that
    # reading is late (a loaded machine delays the 100 ms poll), on the edge's own refusal
    # ("edge_refused"): both before any edge work.
    before = spills(router, "edge_busy") + spills(router, "edge_refused")
    with Saturated(edge, stub):
        for policy in ("cascade", "auto"):
            reply = stub.Generate(build_request("Name a colour.", policy=policy, max_tokens=8,
                                                temperature=0.0), timeout=60)
            assert reply.decision.spilled
            assert reply.decision.spill_reason in ("edge_busy", "edge_refused")
            assert [s.tier for s in reply.segments] == [common_pb2.TIER_CLOUD]
            assert reply.usage.edge_generated_tokens == 0
            if policy == "auto" and reply.decision.spill_reason == "edge_busy":
                assert reply.timings.scoring_ns == 0  # no prompt encoding for the cloud alone
        spec = stub.Generate(build_request("Name a colour.", policy="speculative",
                                           max_tokens=8, temperature=0.0), timeout=60)
        assert spec.decision.spilled
        assert spec.decision.spill_reason in ("edge_slow_draft", "edge_refused")
    cloud = stub.Generate(build_request("Name a colour.", policy="cloud", max_tokens=8,
                                        temperature=0.0), timeout=60)
    assert spec.text == cloud.text  # spilled speculation is still the cloud's answer
    refused_drafts = spec.decision.spill_reason == "edge_refused"  # counted like the others
    assert spills(router, "edge_busy") + spills(router, "edge_refused") == \
        before + 2 + refused_drafts
