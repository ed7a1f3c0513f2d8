"""Two cloud replicas behind the router, on the real SmolLM2 stack (`tandem up
--cloud-replicas 2`'s LocalStack): the chat workload spreads over both without losing
prefix-cache hits, speculative sessions verify where their KV is, two router replicas
serve one session as one, and killing a replica mid-load loses only the streams it was
serving. The kill test runs last (the module's stack keeps one replica afterwards)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tandem.loadtests.workload import load_prompt_set
from tandem.shared.process import RedisProcess, ServiceProcess
from tandem.shared.stack import LocalStack, StackSettings
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.conftest import start_services

pytestmark = pytest.mark.real_model

# One compute thread per model process: two clouds and an edge share two cores.
STACK_TOML = """
[cloud]
threads = 1
[edge]
threads = 1
[router]
adaptive_draft = false
"""
TIMEOUT_S = 300.0


class Fleet:
    """The stack (two clouds, an edge, Redis, the router) and routers added beside it."""

    def __init__(self, stack: LocalStack, workdir: Path) -> None:
        self.stack = stack
        self.services = stack.named()
        self.clouds = [self.services["cloud"], self.services["cloud-2"]]
        self.workdir = workdir
        self.extra: list[ServiceProcess] = []

    def router(self, *clouds: ServiceProcess) -> ServiceProcess:
        """Another router over ``clouds`` (all by default), sharing the stack's Redis."""
        redis = self.stack.redis
        assert isinstance(redis, RedisProcess)
        router = start_services(self.workdir, [("router", [
            "--cloud-address", ",".join(c.address for c in clouds or self.clouds),
            "--edge-address", self.services["edge"].address, "--state", redis.url,
            "--no-adaptive-draft", "--http-port", "-1"])])[0]
        self.extra.append(router)
        return router

    def stop(self) -> None:
        for router in self.extra:
            router.stop()
        self.stack.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("replicas")
    config = workdir / "stack.toml"
    config.write_text(STACK_TOML)
    stack = LocalStack(StackSettings.on_free_ports(str(config), cloud_replicas=2))
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    fleet = Fleet(stack, workdir)
    yield fleet
    fleet.stop()


def scrape(service: ServiceProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics",
                                  timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def stub(service: ServiceProcess) -> router_pb2_grpc.RouterStub:
    return router_pb2_grpc.RouterStub(grpc.insecure_channel(service.address))


def request(text: str, policy: str, max_tokens: int, session: str = "", tenant: str = "",
            system: str = "") -> router_pb2.GenerateRequest:
    message = router_pb2.GenerateRequest(
        policy=policy, session_id=session, tenant=tenant,
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0))
    if system:
        for role, content in (("system", system), ("user", text)):
            message.messages.messages.add(role=role, content=content)
    else:
        message.prompt = text
    return message


def run_chats(router: router_pb2_grpc.RouterStub, tenant: str, rounds: int = 2) -> int:
    """The built-in chat workload (shared system prompt, three turns each), every chat in
    its own thread and session, ``rounds`` times over; returns the turns answered."""
    chats = load_prompt_set("chats").chats
    answered: list[int] = []

    def chat(index: int, round_: int) -> None:
        item = chats[index]
        session = f"{tenant}-{round_}-{index}-{time.time_ns()}"
        for turn, text in enumerate(item.turns):
            router.Generate(request(text, "cloud", 16, session, tenant,
                                    item.system if turn == 0 else ""), timeout=TIMEOUT_S)
            answered.append(1)

    for round_ in range(rounds):
        threads = [threading.Thread(target=chat, args=(i, round_)) for i in range(len(chats))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT_S)
    return len(answered)


def prefix_hit_ratio(fleet: Fleet, run) -> float:  # type: ignore[no-untyped-def]
    """Prefix-cache hits over queries on both cloud replicas while ``run()`` ran."""
    before = [scrape(c) for c in fleet.clouds]
    run()
    after = [scrape(c) for c in fleet.clouds]
    hits = sum(total(a, "tandem_cloud_prefix_cache_hits_total")
               - total(b, "tandem_cloud_prefix_cache_hits_total") for a, b in zip(after, before))
    queries = sum(total(a, "tandem_cloud_prefix_cache_queries_total")
                  - total(b, "tandem_cloud_prefix_cache_queries_total")
                  for a, b in zip(after, before))
    return hits / queries


def test_chat_workload_uses_both_replicas_and_keeps_its_prefix_hits(fleet):
    """The same chats, once through a router that knows one replica and once through one
    that balances two (different tenants: the prefix caches are per tenant, so neither
    run finds the other's entries)."""
    single = stub(fleet.router(fleet.clouds[0]))
    pair = fleet.services["router"]
    before = scrape(pair)
    one = prefix_hit_ratio(fleet, lambda: run_chats(single, "chat-single"))
    two = prefix_hit_ratio(fleet, lambda: run_chats(stub(pair), "chat-pair"))
    after = scrape(pair)
    per_replica = {c.address: total(after, "tandem_router_replica_requests_total",
                                    tier="cloud", replica=c.address)
                   - total(before, "tandem_router_replica_requests_total",
                           tier="cloud", replica=c.address) for c in fleet.clouds}
    print(json.dumps({"chat_prefix_hit_ratio": {"one_replica": round(one, 3),
                                                "two_replicas": round(two, 3)},
                      "requests_per_replica": per_replica}))
    assert all(n > 0 for n in per_replica.values()), per_replica
    assert sum(per_replica.values()) == 24
    assert two >= 0.9 * one, (one, two)


def test_speculative_sessions_verify_where_their_kv_is(fleet):
    router = fleet.services["router"]
    before = scrape(router)
    prompts = ["List three rivers in Europe.", "Describe a rainy morning in two sentences.",
               "Why do leaves change colour in autumn?", "Explain what a compiler does.",
               "Give two tips for sleeping well.", "What is the capital of Canada?"]
    answers: list[router_pb2.GenerateResponse] = []

    def ask(text: str, tenant: str) -> None:
        answers.append(stub(router).Generate(request(text, "speculative", 24, tenant=tenant),
                                             timeout=TIMEOUT_S))

    def verifies_per_replica() -> dict[str, float]:
        now = scrape(router)
        return {c.address: total(now, "tandem_router_replica_requests_total", method="verify",
                                 replica=c.address)
                - total(before, "tandem_router_replica_requests_total", method="verify",
                        replica=c.address) for c in fleet.clouds}

    # Every session has its own tenant, so its prefix (the chat template's system turn
    # comes first) hashes to its own point on the ring: sessions land on both replicas
    # by the balancer's hash, not by timing. One batch all on one replica has odds of
    # 1 in 32; a further batch is asked then.
    for batch in range(4):
        threads = [threading.Thread(target=ask, args=(p, f"spec-{batch}-{i}"))
                   for i, p in enumerate(prompts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT_S)
        if all(n > 0 for n in verifies_per_replica().values()):
            break
    after = scrape(router)
    verifies = verifies_per_replica()
    rounds = sum(a.usage.cloud_forward_passes for a in answers)
    print(json.dumps({"speculative_verifies_per_replica": verifies, "cloud_passes": rounds,
                      "sessions": len(answers)}))
    assert len(answers) == len(prompts) * (batch + 1)
    assert sum(verifies.values()) >= len(answers) and all(n > 0 for n in verifies.values())
    assert sum(verifies.values()) <= rounds  # every round one Verify (none retried)
    for name in ("tandem_router_session_rebuilds_total", "tandem_router_session_kv_misses_total",
                 "tandem_router_failovers_total"):
        assert total(after, name) - total(before, name) == 0, name


def test_two_router_replicas_serve_one_session_alternately(fleet):
    routers = [stub(fleet.services["router"]), stub(fleet.router())]
    turns = ["My name is Ada and I keep bees.", "What do I keep?", "What is my name?",
             "Say my name backwards."]
    session, alone = f"alt-{time.time_ns()}", f"one-{time.time_ns()}"
    for i, text in enumerate(turns):
        shared = routers[i % 2].Generate(request(text, "cloud", 10, session), timeout=TIMEOUT_S)
        single = routers[0].Generate(request(text, "cloud", 10, alone), timeout=TIMEOUT_S)
        assert shared.text == single.text
        assert shared.usage.prompt_tokens == single.usage.prompt_tokens  # the same history


def test_killing_a_cloud_replica_loses_only_its_in_flight_streams(fleet):
    router = fleet.services["router"]
    victim = fleet.clouds[1]
    chat = load_prompt_set("chats").chats[0]
    session = f"survivor-{time.time_ns()}"
    opening = stub(router).Generate(request(chat.turns[0], "cloud", 12, session,
                                            system=chat.system), timeout=TIMEOUT_S)
    before = scrape(router)
    outcomes: list[str] = []
    started, finished = [0], [0]
    lock = threading.Lock()
    total_requests, killed_at_in_flight = 24, [0]

    def worker(seed: int) -> None:
        client = stub(router)
        for i in range(total_requests // 4):
            with lock:
                started[0] += 1
            code = "OK"
            try:
                for _ in client.GenerateStream(request(
                        f"Count from {seed * 10 + i} upwards, one number per line.", "cloud", 40),
                        timeout=120):
                    pass
            except grpc.RpcError as exc:
                code = exc.code().name
            with lock:
                finished[0] += 1
                outcomes.append(code)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    while finished[0] < 4:
        time.sleep(0.05)
    with lock:
        killed_at_in_flight[0] = started[0] - finished[0]
        victim.proc.kill()  # kill -9
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a request hung"
    after = scrape(router)
    ok, unavailable = outcomes.count("OK"), outcomes.count("UNAVAILABLE")
    lost = total(after, "tandem_router_streams_lost_total") - total(
        before, "tandem_router_streams_lost_total")
    print(f"kill -9 during load: total {len(outcomes)}, completed {ok}, UNAVAILABLE {unavailable} "
          f"(in flight at the kill: {killed_at_in_flight[0]}), streams lost {lost}")
    assert len(outcomes) == total_requests and ok + unavailable == total_requests
    assert unavailable <= killed_at_in_flight[0] and unavailable == lost
    assert total(after, "tandem_router_replica_healthy", replica=victim.address) == 0
    # The session goes on on the survivor, its history intact; speculation too.
    later = stub(router).Generate(request(chat.turns[1], "cloud", 12, session), timeout=TIMEOUT_S)
    assert later.usage.prompt_tokens > opening.usage.prompt_tokens + opening.usage.cloud_tokens
    spec = stub(router).Generate(request("Name a colour.", "speculative", 8), timeout=TIMEOUT_S)
    assert spec.text
