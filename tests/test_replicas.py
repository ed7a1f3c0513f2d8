"""Several replicas per tier, without models: prefix-aware placement with bounded load
(router/balance.py), health, DNS membership and failover (router/replicas.py), session
affinity through the state store (router/replica_tiers.py). Replicas are fakes that
record their calls; the real-stack tests are in test_replicas_stack.py."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

from tandem.router.balance import HashRing, PrefixBalancer, block_hashes
from tandem.router.metrics import ReplicaMetrics
from tandem.router.replica_tiers import ReplicaTiers
from tandem.router.replicas import ReplicaPool, Targets
from tandem.router.state.memory import MemoryStateStore
from tandem.router.state.redis_store import RedisStateStore
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import Unavailable
from tandem.v1 import cloud_pb2, common_pb2, edge_pb2


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def prompt(seed: int, length: int = 80) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, 49_000) for _ in range(length)]


class FakeReplica:
    """A tier replica that answers every call and records it; ``down`` makes every call
    fail UNAVAILABLE, ``fail_after`` makes streams fail after that many chunks."""

    calls: list[tuple[str, str]]  # shared by a test's replicas: (address, method)

    def __init__(self, address: str, calls: list[tuple[str, str]]) -> None:
        self.address = address
        self.calls = calls
        self.channel = None
        self.down = False
        self.fail_after: int | None = None
        self.sessions: dict[str, int] = {}  # session -> tokens it holds KV for

    def _call(self, method: str) -> None:
        self.calls.append((self.address, method))
        if self.down:
            raise Unavailable(f"{self.address}: unavailable: connection refused")

    async def verify(self, request, deadline, timings):  # type: ignore[no-untyped-def]
        self._call("verify")
        cached = self.sessions.get(request.session_id, 0)
        self.sessions[request.session_id] = len(request.tokens)
        return cloud_pb2.VerifyResponse(accepted=0, next_token=7, cached_tokens=cached)

    async def draft(self, request, deadline, timings):  # type: ignore[no-untyped-def]
        self._call("draft")
        return edge_pb2.DraftResponse(tokens=[5])

    async def edge_generate(self, request, deadline, timings):  # type: ignore[no-untyped-def]
        self._call("generate")
        return common_pb2.TierGenerateResponse(text=self.address)

    async def _stream(self, request):  # type: ignore[no-untyped-def]
        self._call("stream")
        for i in range(3):
            if self.fail_after is not None and i >= self.fail_after:
                raise Unavailable(f"{self.address}: unavailable: connection reset")
            yield common_pb2.TierGenerateChunk(token_ids=[i], text=self.address)

    def cloud_stream(self, request, deadline, timings):  # type: ignore[no-untyped-def]
        return self._stream(request)

    edge_stream = cloud_stream

    async def end_session(self, tenant: str, session_id: str) -> None:
        self.calls.append((self.address, "end_session"))
        self.sessions.pop(session_id, None)

    def cloud_load(self):  # type: ignore[no-untyped-def]
        return None

    edge_load = cloud_load

    async def close(self) -> None:
        pass


class Fleet:
    """Fake replicas behind pools, as a router sees them."""

    def __init__(self, cloud: str, edge: str = "edge:1", state=None,  # type: ignore[no-untyped-def]
                 resolver=None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.replicas: dict[str, FakeReplica] = {}
        self.registry = CollectorRegistry()
        self.metrics = ReplicaMetrics(self.registry)

        def connect(address: str) -> FakeReplica:
            return self.replicas.setdefault(address, FakeReplica(address, self.calls))

        def pool(tier: str, spec: str) -> ReplicaPool:
            kwargs = {"resolver": resolver, "resolve_interval_s": 0.01} if resolver else {}
            return ReplicaPool(tier, Targets.parse(spec), connect, self.metrics,
                               watch_health=False, **kwargs)

        self.tiers = ReplicaTiers(pool("edge", edge), pool("cloud", cloud),
                                  state or MemoryStateStore(), affinity_ttl_s=60)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    async def verify(self, session: str, tokens: list[int], tenant: str = "t") -> str:
        before = len(self.calls)
        await self.tiers.verify(cloud_pb2.VerifyRequest(
            session_id=session, tokens=tokens, draft_tokens=[1], tenant=tenant),
            Deadline(10.0), common_pb2.Timings())
        return [a for a, m in self.calls[before:] if m == "verify"][-1]

    async def stream(self, tokens: list[int], tenant: str = "t") -> list[str]:
        request = common_pb2.TierGenerateRequest(prompt_tokens=common_pb2.TokenIds(ids=tokens),
                                                 tenant=tenant)
        return [c.text async for c in self.tiers.cloud_stream(request, Deadline(10.0),
                                                              common_pb2.Timings())]


# -- placement ---------------------------------------------------------------------------
def test_block_hashes_chain_whole_blocks_and_depend_on_the_tenant():
    tokens = prompt(1, 70)
    hashes = block_hashes("a", tokens)
    assert len(hashes) == 4  # 70 tokens: four whole 16-token blocks
    assert block_hashes("a", tokens[:64] + [1, 2]) == hashes  # the partial block is ignored
    assert block_hashes("a", tokens[:40])[:2] == hashes[:2]  # a shared prefix, shared hashes
    assert block_hashes("b", tokens)[0] != hashes[0]  # caches are per tenant
    assert block_hashes("a", [1, 2, 3]) != block_hashes("a", [1, 2, 4])  # shorter than a block


def test_ring_spreads_keys_and_a_new_member_takes_only_its_share():
    keys = [block_hashes("t", prompt(i))[-1] for i in range(2000)]
    two = HashRing(["a:1", "b:1"])
    placed = {k: next(two.walk(k)) for k in keys}
    shares = Counter(placed.values())
    assert min(shares.values()) > 0.35 * len(keys)
    three = HashRing(["a:1", "b:1", "c:1"])
    moved = [k for k in keys if next(three.walk(k)) != placed[k]]
    assert moved and all(next(three.walk(k)) == "c:1" for k in moved)


def test_same_prefix_same_replica_and_a_chat_follows_its_history():
    balancer = PrefixBalancer()
    members = ["a:1", "b:1"]
    idle = dict.fromkeys(members, 0)
    system = prompt(0, 64)
    first = {balancer.choose("t", system + prompt(i, 30), idle, members) for i in range(20)}
    assert len(first) == 1  # the same 64 leading tokens: the same replica
    # A chat's next turn extends its last prompt: it goes where that prompt went, even
    # after the balancer placed it elsewhere for load.
    turn1 = system + prompt(99, 40)
    other = ({"a:1", "b:1"} - first).pop()
    placed = balancer.choose("t", turn1, {other: 0, next(iter(first)): 9}, members)
    assert placed == other
    assert balancer.choose("t", turn1 + prompt(100, 50), idle, members) == other


def test_bounded_load_passes_a_hot_replica_over():
    balancer = PrefixBalancer(epsilon=0.25)
    members = ["a:1", "b:1"]
    hot = prompt(3)
    home = balancer.choose("t", hot, dict.fromkeys(members, 0), members)
    away = ({"a:1", "b:1"} - {home}).pop()
    # (1 + 0.25) x (4 + 1) / 2 -> cap 4: a replica holding 4 takes no more
    assert balancer.choose("t", hot, {home: 3, away: 1}, members) == home
    assert balancer.choose("t", hot, {home: 4, away: 0}, members) == away
    # ... and the prefix now lives there too: the next one goes there while it has room
    assert balancer.choose("t", hot, {home: 0, away: 1}, members) == away
    loads = dict.fromkeys(members, 0)
    for i in range(40):  # one hot prefix, 40 concurrent requests: both replicas serve it
        loads[balancer.choose("t", hot, loads, members)] += 1
    assert max(loads.values()) <= balancer.cap({m: loads[m] for m in members})


# -- pools: health, membership, failover ----------------------------------------------------
def test_targets_parse_lists_and_dns_names():
    assert Targets.parse("a:1, b:2").addresses == ("a:1", "b:2")
    assert Targets.parse("a:1").single and not Targets.parse("dns:///svc:50052").single
    assert Targets.parse("dns:///svc.ns.svc.cluster.local:50052").dns == "svc.ns.svc.cluster.local:50052"
    for bad in ("", "a", "a:1,a:1", "a:99999", "a:1,dns:///b:2", "dns:///b"):
        with pytest.raises(ValueError):
            Targets.parse(bad)


def test_unhealthy_replica_gets_no_new_calls():
    async def scenario():
        fleet = Fleet("a:1,b:1")
        for replica in await fleet.tiers.cloud.replicas():
            replica.healthy = replica.address == "b:1"
        served = {s for i in range(20) for s in await fleet.stream(prompt(i))}
        return served, fleet

    served, fleet = run(scenario())
    assert served == {"b:1"}


def test_unavailable_before_the_first_token_is_retried_once_on_another_replica():
    async def scenario():
        fleet = Fleet("a:1,b:1", edge="a:1,b:1")
        await fleet.tiers.cloud.replicas()
        fleet.replicas["a:1"].down = True
        outputs = [await fleet.stream(prompt(i)) for i in range(12)]
        failed_first = sum(1 for a, m in fleet.calls if a == "a:1")
        request = common_pb2.TierGenerateRequest(prompt_tokens=common_pb2.TokenIds(ids=prompt(1)))
        answer = await fleet.tiers.edge_generate(request, Deadline(5), common_pb2.Timings())
        fleet.replicas["b:1"].down = True
        with pytest.raises(Unavailable):
            await fleet.stream(prompt(1))
        before = len(fleet.calls)
        with pytest.raises(Unavailable):  # unary: the same, once
            await fleet.tiers.edge_generate(request, Deadline(5), common_pb2.Timings())
        return outputs, failed_first, answer.text, len(fleet.calls) - before, fleet

    outputs, failed_first, answer, unary_tries, fleet = run(scenario())
    assert all(out == ["b:1"] * 3 for out in outputs) and answer == "b:1"
    assert failed_first > 0  # the prefix put some on the down replica: each retried on b
    assert fleet.sample("tandem_router_failovers_total", {"tier": "cloud", "method": "stream"}) \
        == failed_first + 1  # and the last stream found both down: tried twice
    assert unary_tries == 2


def test_stream_that_loses_its_replica_mid_way_ends_unavailable_and_is_counted():
    async def scenario():
        fleet = Fleet("a:1,b:1")
        for replica in (await fleet.tiers.cloud.replicas()):
            fleet.replicas[replica.address].fail_after = 1
        got: list[str] = []
        request = common_pb2.TierGenerateRequest(prompt_tokens=common_pb2.TokenIds(ids=prompt(2)))
        with pytest.raises(Unavailable):
            async for chunk in fleet.tiers.cloud_stream(request, Deadline(5), common_pb2.Timings()):
                got.append(chunk.text)
        in_flight = [r.in_flight for r in await fleet.tiers.cloud.replicas()]
        return got, fleet, in_flight

    got, fleet, in_flight = run(scenario())
    assert len(got) == 1  # one chunk, then the replica died: not retried (output started)
    assert fleet.sample("tandem_router_streams_lost_total", {"tier": "cloud"}) == 1
    assert in_flight == [0, 0]


def test_dns_membership_follows_resolution():
    answers = [["10.0.0.1:50052"], ["10.0.0.1:50052", "10.0.0.2:50052"], ["10.0.0.2:50052"]]
    current = list(answers[0])

    async def resolver(name: str) -> list[str]:
        assert name == "cloud.tandem.svc:50052"
        return list(current)

    async def scenario():
        fleet = Fleet("dns:///cloud.tandem.svc:50052", resolver=resolver)
        seen = []
        for answer in answers:
            current[:] = answer
            await asyncio.sleep(0.05)  # the pool re-resolves every 10 ms here
            seen.append(sorted(r.address for r in await fleet.tiers.cloud.replicas()))
        await fleet.tiers.close()
        return seen

    assert run(scenario()) == answers


# -- speculative sessions: affinity and rebuilds ---------------------------------------------
def test_a_session_verifies_on_one_replica_while_its_tokens_grow():
    async def scenario():
        fleet = Fleet("a:1,b:1,c:1")
        per_session = {}
        for s in range(12):
            tokens = prompt(s, 20)  # short prompts: the leading blocks change as it grows
            places = set()
            for _ in range(6):
                places.add(await fleet.verify(f"spec-{s}", tokens))
                tokens = tokens + prompt(1000 + s, 9)
            per_session[s] = places
            await fleet.tiers.end_session("t", f"spec-{s}")
        return per_session, fleet

    per_session, fleet = run(scenario())
    assert all(len(places) == 1 for places in per_session.values())
    assert len(set.union(*per_session.values())) > 1  # sessions spread over replicas
    assert fleet.sample("tandem_router_session_rebuilds_total", {"tier": "cloud"}) == 0
    assert fleet.sample("tandem_router_session_kv_misses_total") == 0
    ended = [a for a, m in fleet.calls if m == "end_session"]
    assert len(ended) == 12 and not any(r.sessions for r in fleet.replicas.values())


def test_a_session_whose_replica_died_is_rebuilt_on_another():
    async def scenario():
        fleet = Fleet("a:1,b:1")
        tokens = prompt(5)
        home = await fleet.verify("spec-x", tokens)
        fleet.replicas[home].down = True  # killed: the call fails UNAVAILABLE
        moved = await fleet.verify("spec-x", tokens + [1, 2])
        again = await fleet.verify("spec-x", tokens + [1, 2, 3])
        return home, moved, again, fleet

    home, moved, again, fleet = run(scenario())
    assert moved != home and again == moved
    assert fleet.sample("tandem_router_session_rebuilds_total", {"tier": "cloud"}) == 1
    assert fleet.sample("tandem_router_session_kv_misses_total") == 0  # rebuilt, not missed


def test_router_replicas_agree_on_a_sessions_replica_through_redis(redis_server):
    """Two routers (two ReplicaTiers, each with its own Redis client) over the same three
    replicas: the session one router started verifies where it lives on the other."""
    async def scenario():
        one = Fleet("a:1,b:1,c:1", state=RedisStateStore(redis_server.url, timeout_s=2.0))
        two = Fleet("a:1,b:1,c:1", state=RedisStateStore(redis_server.url, timeout_s=2.0))
        two.replicas, two.calls = one.replicas, one.calls  # the same replicas
        results = []
        for s in range(6):
            session, tokens = f"spec-agree-{s}-{random.random()}", prompt(50 + s, 20)
            first = await one.verify(session, tokens)
            # a prompt the other router has never seen, which alone could go anywhere
            results.append((first, await two.verify(session, tokens + prompt(s, 40))))
            await two.tiers.end_session("t", session)
            assert await one.tiers.cloud_sessions.state.affinity("cloud", "t", session) is None
        for fleet in (one, two):
            await fleet.tiers.cloud_sessions.state.close()
        return results

    assert all(first == second for first, second in run(scenario()))
