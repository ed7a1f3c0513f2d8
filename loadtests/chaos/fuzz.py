"""Scenario 1, fuzzed input: hypothesis-generated Router, Cloud and Edge requests (and raw
random bytes as request bodies) against the running services. Every one must end with a
defined status (OK or a designed refusal: INVALID_ARGUMENT, OUT_OF_RANGE,
RESOURCE_EXHAUSTED, UNAUTHENTICATED), none with UNKNOWN/INTERNAL or a hang; a refused
request stores nothing (a session named by a refused request has no key in Redis); the
stack answers normally afterwards."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc

from tandem.loadtests.chaos.calls import REFUSALS, Router, request, stream
from tandem.loadtests.chaos.scenario import Report, timed
from tandem.loadtests.chaos.stack import Target
from tandem.v1 import cloud_pb2_grpc, common_pb2

PROMISE = ("every fuzzed request gets a defined status (no UNKNOWN/INTERNAL, no hang), "
           "refused requests store nothing, the stack answers normally afterwards")
NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ALLOWED = {"OK"} | REFUSALS
UNARY = {"Generate", "Verify", "Draft", "Info", "Load", "EndSession"}
METHODS = {"router": ["Generate", "GenerateStream"],
           "cloud": ["Generate", "GenerateStream", "Verify", "EndSession", "Info", "Load"],
           "edge": ["Generate", "GenerateStream", "Draft", "Info", "Load"]}


@dataclass
class FuzzSettings:
    router: int = 800  # generated requests per service
    cloud: int = 500
    edge: int = 500
    raw: int = 300  # raw random byte strings, spread over every method
    concurrency: int = 4
    # A request still running then counts as a hang. A 3,000-token prompt takes the edge
    # ~12 s to prefill alone on 2 cores, and two at once beside the rest took over 60 s.
    timeout_s: float = 180.0
    seed: int | None = None


@dataclass
class Sent:
    service: str
    method: str
    body: bytes
    session_id: str = ""
    code: str = ""
    details: str = ""


def _examples(strategy: Any, count: int, seed: int) -> list[Any]:
    """``count`` examples drawn by hypothesis (its generation phase only)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as seeded

    found: list[Any] = []

    @seeded(seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example: Any) -> None:
        found.append(example)

    collect()
    return found


def generate(settings: FuzzSettings, vocab: int, seed: int) -> list[Sent]:
    """The requests to send: generated messages per service and method, raw bytes."""
    from hypothesis import strategies as st

    from tandem.loadtests.chaos import strategies as s

    rng = random.Random(seed)
    plan: list[Sent] = []
    for req in _examples(s.router_request(), settings.router, seed):
        plan.append(Sent("router", rng.choice(METHODS["router"]), req.SerializeToString(),
                         req.session_id))
    tier_kinds = {
        "cloud": [("Generate", s.tier_request(vocab)), ("GenerateStream", s.tier_request(vocab)),
                  ("Verify", s.verify_request(vocab)), ("EndSession", s.end_session_request())],
        "edge": [("Generate", s.tier_request(vocab)), ("GenerateStream", s.tier_request(vocab)),
                 ("Draft", s.draft_request(vocab))]}
    for service, kinds in tier_kinds.items():
        count = getattr(settings, service)
        for method, strategy in kinds:
            for req in _examples(strategy, max(count // len(kinds), 1), seed):
                plan.append(Sent(service, method, req.SerializeToString()))
    for body in _examples(st.binary(max_size=512), settings.raw, seed):
        service = rng.choice(list(METHODS))
        plan.append(Sent(service, rng.choice(METHODS[service]), body))
    rng.shuffle(plan)
    return plan


async def _send(target: Target, channels: dict[str, grpc.aio.Channel], sent: Sent,
                timeout_s: float, rng: random.Random) -> None:
    service = sent.service.capitalize()
    path = f"/tandem.v1.{service}/{sent.method}"
    anonymous = rng.random() < 0.05  # no key / no internal token: refused before any work
    metadata = (() if anonymous else
                target.metadata("fuzz") if sent.service == "router" else target.tier_metadata())
    try:
        if sent.method in UNARY:
            await channels[sent.service].unary_unary(path)(sent.body, timeout=timeout_s,
                                                           metadata=metadata)
        else:
            async for _ in channels[sent.service].unary_stream(path)(
                    sent.body, timeout=timeout_s, metadata=metadata):
                pass
        sent.code = "OK"
    except grpc.aio.AioRpcError as exc:
        sent.code, sent.details = exc.code().name, exc.details() or ""


async def _send_all(target: Target, plan: list[Sent], settings: FuzzSettings,
                    seed: int) -> None:
    addresses = {"router": target.router, "cloud": target.cloud, "edge": target.edge}
    channels = {name: grpc.aio.insecure_channel(addr) for name, addr in addresses.items()}
    rng = random.Random(seed)
    queue = list(plan)

    async def worker() -> None:
        while queue:
            await _send(target, channels, queue.pop(), settings.timeout_s, rng)

    try:
        await asyncio.gather(*(worker() for _ in range(settings.concurrency)))
    finally:
        for channel in channels.values():
            await channel.close()


def _session_keys(redis_url: str) -> set[str]:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return {k.decode() for k in client.scan_iter(match="tandem:*:session:*", count=1000)}
    finally:
        client.close()


def _stored_for_refused(plan: list[Sent], keys_after: set[str]) -> list[str]:
    """Sessions of refused router requests that have state (none may)."""
    ok = {s.session_id for s in plan if s.service == "router" and s.code == "OK"}
    refused = {s.session_id for s in plan if s.service == "router" and s.code != "OK"
               and NAME.fullmatch(s.session_id) and s.session_id.startswith("fz-")}
    return sorted(sid for sid in refused - ok
                  if any(key.endswith(f":{sid}") for key in keys_after))


async def _vocab(target: Target) -> int:
    async with grpc.aio.insecure_channel(target.cloud) as channel:
        info = await cloud_pb2_grpc.CloudStub(channel).Info(
            common_pb2.InfoRequest(), timeout=10, metadata=target.tier_metadata())
    return info.vocab_size


async def run(target: Target, settings: FuzzSettings) -> Report:
    report = Report("fuzz", PROMISE)
    await timed(report, _run(target, settings, report))
    return report


async def _run(target: Target, settings: FuzzSettings, report: Report) -> None:
    seed = settings.seed if settings.seed is not None else random.randrange(2**32)
    plan = generate(settings, await _vocab(target), seed)
    keys_before = _session_keys(target.redis_url) if target.redis_url else set()
    started = time.monotonic()
    await _send_all(target, plan, settings, seed)
    by_status = Counter(f"{s.service}.{s.method}:{s.code}" for s in plan)
    unexpected = [s for s in plan if s.code not in ALLOWED]
    report.measured.update(
        seed=seed, requests=len(plan), seconds_sending=round(time.monotonic() - started, 1),
        by_code=dict(Counter(s.code for s in plan)),
        by_service={svc: sum(1 for s in plan if s.service == svc) for svc in METHODS},
        by_method_status=dict(sorted(by_status.items())))
    report.check(len(plan) >= 2000 or settings.router + settings.cloud + settings.edge < 2000,
                 f"only {len(plan)} requests generated")
    report.check(not unexpected, "undefined statuses: " + "; ".join(
        f"{s.service}.{s.method} {s.code}: {s.details[:160]}" for s in unexpected[:8]))
    if target.redis_url:
        keys_after = _session_keys(target.redis_url)
        stored = _stored_for_refused(plan, keys_after)
        report.measured["session_keys_added"] = len(keys_after - keys_before)
        report.check(not stored, f"refused requests stored sessions: {stored[:5]}")
    async with Router(target.router) as router:
        after = await stream(router.stub, request("Say hi.", "cloud", max_tokens=4), 120,
                             target.metadata("fuzz"))
    report.measured["answer_after"] = after.code
    report.check(after.ok and bool(after.token_ids), f"no normal answer afterwards: {after.code}")
