"""Scenario 7, isolation between tenants (API keys on): tenant A cannot read or continue
tenant B's session by reusing its id; the prefix caches give A no timing signal about
B's prompts (B's prompt asked by A is as slow as a cold one, while B asking again is
fast: the caches work, salted per tenant); the tiers refuse calls that bypass the router
(no internal token), and the router refuses calls without a known key."""

from __future__ import annotations

import random
import statistics
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.loadtests.chaos.calls import Router, request, stream
from tandem.loadtests.chaos.scenario import Report, timed
from tandem.loadtests.chaos.stack import Target
from tandem.v1 import cloud_pb2, common_pb2, edge_pb2

PROMISE = ("A cannot continue B's session; B's cached prompt is cold for A; tiers refuse "
           "calls without the internal token; the router refuses calls without a key")
CROSS_MIN = 0.7  # A's time to first token on B's prompt, at least this fraction of cold
WARM_MAX = 0.5  # B's own repeat, at most this fraction of cold (the cache is there)
WORDS = ("river stone cloud garden window silver market candle forest engine harbor "
         "lantern meadow violin orbit pepper canyon marble thunder velvet").split()


@dataclass
class IsolationSettings:
    trials: int = 3  # prompts per tier in the timing test
    prompt_words: int = 700


async def run(target: Target, settings: IsolationSettings) -> Report:
    report = Report("isolation", PROMISE)
    if not target.keys:
        report.skipped = "needs a router with API keys (tenants come from keys)"
        return report
    await timed(report, _run(target, settings, report))
    return report


async def _run(target: Target, settings: IsolationSettings, report: Report) -> None:
    async with Router(target.router) as router:
        report.measured["session"] = await _session(router, target, report)
        report.measured["prefix_cache"] = {
            tier: await _timing(router, target, settings, tier, report)
            for tier in ("cloud", "edge")}
        report.measured["router_without_key"] = await _router_refuses(router, report)
    report.measured["bypass"] = await _bypass(target, report)


async def _session(router: Router, target: Target, report: Report) -> dict[str, Any]:
    """B stores a secret in a session; A asks with the same session id."""
    sid, question = f"iso-{uuid.uuid4().hex[:10]}", "What is my secret word?"
    bob, alice = target.metadata("bob"), target.metadata("alice")
    told = await stream(router.stub, request("My secret word is PELICAN.", "edge", 8,
                                             session_id=sid), 60, bob)
    theirs = await stream(router.stub, request(question, "edge", 8, session_id=sid), 60, alice)
    fresh = await stream(router.stub, request(question, "edge", 8,
                                              session_id=f"iso-{uuid.uuid4().hex}"), 60, alice)
    mine = await stream(router.stub, request(question, "edge", 8, session_id=sid), 60, bob)
    tokens = {name: r.final.usage.prompt_tokens if r.final else None
              for name, r in (("other_tenant", theirs), ("fresh", fresh), ("owner", mine))}
    report.check(all(r.ok for r in (told, theirs, fresh, mine)), "session requests failed")
    report.check(tokens["other_tenant"] == tokens["fresh"],
                 f"tenant A's turn on B's session id saw history: {tokens}")
    report.check((tokens["owner"] or 0) > (tokens["fresh"] or 0),
                 f"B's own session lost its history: {tokens}")
    report.check("PELICAN" not in theirs.text.upper(), "A's answer names B's secret")
    return {"prompt_tokens": tokens}


def _prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + ". Summarize."


async def _ttft(router: Router, target: Target, tenant: str, prompt: str, tier: str) -> float:
    result = await stream(router.stub, request(prompt, tier, 1, temperature=0.7, seed=1), 120,
                          target.metadata(tenant))
    return result.first_chunk_s or result.seconds


async def _timing(router: Router, target: Target, settings: IsolationSettings, tier: str,
                  report: Report) -> dict[str, Any]:
    """Per trial: B's prompt cold, B's repeat (warm), A on B's prompt, A on a new prompt."""
    rng = random.Random(f"{tier}-{uuid.uuid4()}")
    cold, warm, cross, control = [], [], [], []
    for _ in range(settings.trials):
        prompt, other = _prompt(rng, settings.prompt_words), _prompt(rng, settings.prompt_words)
        cold.append(await _ttft(router, target, "bob", prompt, tier))
        warm.append(await _ttft(router, target, "bob", prompt, tier))
        cross.append(await _ttft(router, target, "alice", prompt, tier))
        control.append(await _ttft(router, target, "alice", other, tier))
    med = {name: statistics.median(v) for name, v in
           (("cold", cold), ("warm", warm), ("other_tenant", cross), ("cold_control", control))}
    report.check(med["warm"] <= WARM_MAX * med["cold"],
                 f"{tier}: the cache did not speed up B's repeat ({med}): the test sees nothing")
    report.check(med["other_tenant"] >= CROSS_MIN * min(med["cold"], med["cold_control"]),
                 f"{tier}: B's prompt was faster for A ({med}): a timing signal")
    return {f"ttft_ms_{k}": round(v * 1e3, 1) for k, v in med.items()}


async def _router_refuses(router: Router, report: Report) -> dict[str, str]:
    out = {}
    for label, metadata in (("no_key", ()), ("unknown_key", (("authorization", "Bearer nope"),))):
        result = await stream(router.stub, request("Say hi.", "edge", 2), 30, metadata)
        out[label] = result.code
        report.check(result.code == "UNAUTHENTICATED", f"router {label}: {result.code}")
    return out


async def _bypass(target: Target, report: Report) -> dict[str, str]:
    """Direct tier calls without (or with a wrong) internal token are refused; health
    checks stay open."""
    tier_request = common_pb2.TierGenerateRequest(prompt="Say hi.",
                                                  sampling=common_pb2.SamplingParams(max_tokens=2))
    calls = {"cloud": [("Generate", tier_request),
                       ("Verify", cloud_pb2.VerifyRequest(session_id="x", tokens=[1, 2],
                                                          draft_tokens=[3]))],
             "edge": [("Generate", tier_request),
                      ("Draft", edge_pb2.DraftRequest(session_id="x", tokens=[1, 2], num_tokens=2))]}
    out = {}
    for tier, methods in calls.items():
        async with grpc.aio.insecure_channel(getattr(target, tier)) as channel:
            for method, message in methods:
                for label, metadata in (("none", ()),
                                        ("wrong", (("x-tandem-internal-token", "guess"),))):
                    code = await _code(channel, f"/tandem.v1.{tier.capitalize()}/{method}",
                                       message, metadata)
                    out[f"{tier}.{method}.{label}"] = code
                    report.check(code == "UNAUTHENTICATED", f"{tier}.{method} ({label}): {code}")
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
            out[f"{tier}.health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
    return out


async def _code(channel: grpc.aio.Channel, method: str, message: Any,
                metadata: tuple[tuple[str, str], ...]) -> str:
    try:
        await channel.unary_unary(method)(message.SerializeToString(), timeout=10,
                                          metadata=metadata)
        return "OK"
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
