"""Scenario 2, tier faults: through the fault proxy on each router-to-tier link, latency,
a stall and a reset, and kill -9 of the cloud and of the edge with streams in flight.
Every request ends within its deadline with a clean status (UNAVAILABLE /
DEADLINE_EXCEEDED) or a correct answer: greedy cloud and speculative answers equal the
cloud's reference answer, and any partial stream is a prefix of it (speculation never
streams unverified edge text); while the cloud is down, cascade and auto answer from the
edge (spill_reason cloud_unavailable). After a tier comes back, the router serves it
again within 5 s (no router restart)."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from typing import Any

from tandem.loadtests.chaos.calls import Result, Router, request, stream, tally
from tandem.loadtests.chaos.scenario import Report, timed_if_breakable
from tandem.loadtests.chaos.stack import CROWD, ChaosStack

PROMISE = ("every request ends within its deadline, OK with a correct answer or UNAVAILABLE/"
           "DEADLINE_EXCEEDED; no unverified edge text; cascade/auto answer from the edge "
           "while the cloud is down; the router recovers within 5 s of a tier's return")
PROMPTS = ["Name three colours of the rainbow.", "What is the capital city of France?"]
CLEAN = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
RECOVERY_LIMIT_S = 5.0
END_MARGIN_S = 1.0  # a request may end this long after its deadline (scheduling noise)
DOWN_DEADLINE_S = 60.0  # of the requests sent while a tier is down


@dataclass
class FaultSettings:
    latency_s: float = 0.02  # added per forwarded piece, each way
    stall_s: float = 6.0
    deadline_s: float = 4.0  # of the requests sent into the stall
    max_tokens: int = 24
    streams: int = 4  # in flight when a tier is killed


class Faults:
    def __init__(self, stack: ChaosStack, settings: FaultSettings, report: Report) -> None:
        self.stack = stack
        self.settings = settings
        self.report = report
        self.reference: dict[str, list[int]] = {}
        self.router: Router | None = None
        self.asked = 0  # each request is its own user (tenant): under the tenant cap

    async def ask(self, prompt: str, policy: str, deadline_s: float,
                  first: asyncio.Event | None = None) -> Result:
        assert self.router is not None
        return await stream(self.router.stub, request(prompt, policy, self.settings.max_tokens),
                            deadline_s, self.stack.metadata(CROWD[self._next()]),
                            first_chunk=first)

    def _next(self) -> int:
        self.asked += 1
        return self.asked % len(CROWD)

    def judge(self, label: str, policy: str, prompt: str, result: Result,
              deadline_s: float) -> None:
        """A result must be clean, in time, and (cloud, speculative) the reference or its
        prefix."""
        r = self.report
        r.check(result.code in CLEAN, f"{label}: {policy} ended {result.code} {result.details}")
        r.check(result.seconds <= deadline_s + END_MARGIN_S,
                f"{label}: {policy} took {result.seconds:.2f} s (deadline {deadline_s} s)")
        reference = self.reference[prompt]
        if policy in ("cloud", "speculative"):
            want = reference if result.ok else reference[:len(result.token_ids)]
            r.check(result.token_ids == want,
                    f"{label}: {policy} streamed tokens that are not the cloud's "
                    f"({len(result.token_ids)} tokens, code {result.code})")

    async def recovery(self, label: str, policy: str = "cloud", limit_s: float = 30.0) -> float:
        """Seconds until the router answers ``policy`` again (polled every 100 ms), which
        must be within RECOVERY_LIMIT_S."""
        started = time.monotonic()
        took = limit_s
        while time.monotonic() - started < limit_s:
            result = await self.ask(PROMPTS[0], policy, 10.0)
            if result.ok:
                took = time.monotonic() - started - result.seconds  # when it was sent
                break
            await asyncio.sleep(0.1)
        self.report.check(took <= RECOVERY_LIMIT_S,
                          f"{label}: the router served {policy} again only after {took:.1f} s "
                          f"(limit {RECOVERY_LIMIT_S} s)")
        return max(took, 0.0)

    async def mixed(self, label: str, deadline_s: float,
                    policies: tuple[str, ...]) -> list[tuple[str, str, Result]]:
        runs = [(p, q) for p in policies for q in PROMPTS]
        results = await asyncio.gather(*(self.ask(q, p, deadline_s) for p, q in runs))
        for (policy, prompt), result in zip(runs, results):
            self.judge(label, policy, prompt, result, deadline_s)
        return [(p, q, r) for (p, q), r in zip(runs, results)]


async def run(stack: ChaosStack, settings: FaultSettings) -> Report:
    report = Report("tier_faults", PROMISE)
    return await timed_if_breakable(report, stack, "faults are injected",
                                    lambda: _run(Faults(stack, settings, report)))


async def _run(f: Faults) -> None:
    async with Router(f.stack.router) as f.router:
        for prompt in PROMPTS:
            f.reference[prompt] = (await f.ask(prompt, "cloud", 60)).token_ids
        f.report.measured["latency"] = await _latency(f)
        f.report.measured["stall"] = await _stall(f)
        f.report.measured["reset"] = await _reset(f)
        f.report.measured["kill_cloud"] = await _kill(f, "cloud", ("cloud", "speculative"))
        f.report.measured["kill_edge"] = await _kill(f, "edge", ("edge",))


async def _latency(f: Faults) -> dict[str, Any]:
    proxy = f.stack.proxies["cloud"]
    proxy.set_latency(f.settings.latency_s)
    try:
        results = await f.mixed("latency", 60.0, ("cloud", "speculative", "cascade"))
    finally:
        proxy.set_latency(0.0)
    return {"added_ms_each_way": f.settings.latency_s * 1e3,
            "statuses": tally(r for _, _, r in results)}


async def _stall(f: Faults) -> dict[str, Any]:
    """The cloud link holds every byte for stall_s while requests with a shorter deadline
    run: they must end by their deadline; cascade/auto may keep an edge answer."""
    proxy, s = f.stack.proxies["cloud"], f.settings
    proxy.stall()
    try:
        results = await f.mixed("stall", s.deadline_s, ("cloud", "speculative", "cascade", "auto"))
        await asyncio.sleep(max(s.stall_s - s.deadline_s, 0.0))
    finally:
        proxy.resume()
    recovered = await f.recovery("stall")
    kept = [r for p, _, r in results if p in ("cascade", "auto") and r.ok and r.final is not None
            and r.final.decision.spill_reason == "cloud_unavailable"]
    return {"statuses": {p: tally(r for q, _, r in results if q == p)
                         for p in ("cloud", "speculative", "cascade", "auto")},
            "edge_answers_kept": len(kept),
            "longest_s": round(max(r.seconds for _, _, r in results), 2),
            "recovered_s": round(recovered, 2)}


async def _reset(f: Faults) -> dict[str, Any]:
    """Every cloud connection is reset while streams run."""
    first = asyncio.Event()
    tasks = [asyncio.ensure_future(f.ask(PROMPTS[i % 2], "cloud", 60.0, first if i == 0 else None))
             for i in range(f.settings.streams)]
    await first.wait()
    reset_at = time.monotonic()
    aborted = f.stack.proxies["cloud"].reset()
    results = await asyncio.gather(*tasks)
    ended_s = time.monotonic() - reset_at
    for i, result in enumerate(results):
        f.judge("reset", "cloud", PROMPTS[i % 2], result, 60.0)
    return {"connections_reset": aborted, "statuses": tally(results),
            "streams_ended_s_after_reset": round(ended_s, 2),
            "recovered_s": round(await f.recovery("reset"), 2)}


async def _kill(f: Faults, tier: str, policies: tuple[str, ...]) -> dict[str, Any]:
    """kill -9 ``tier`` with streams in flight; requests while it is down; its return."""
    first = asyncio.Event()
    runs = [(policies[i % len(policies)], PROMPTS[i % 2]) for i in range(f.settings.streams)]
    tasks = [asyncio.ensure_future(f.ask(q, p, 60.0, first if i == 0 else None))
             for i, (p, q) in enumerate(runs)]
    await first.wait()
    killed_at = time.monotonic()
    f.stack.signal(tier, signal.SIGKILL)
    f.stack.wait_exit(tier, 10)
    in_flight = await asyncio.gather(*tasks)
    ended_s = time.monotonic() - killed_at
    for (policy, prompt), result in zip(runs, in_flight):
        f.judge(f"kill {tier}", policy, prompt, result, 60.0)
    down = await _while_down(f, tier)
    restart_s = await asyncio.to_thread(f.stack.restart, tier)
    recovered = await f.recovery(f"{tier} back", "cloud" if tier == "cloud" else "edge")
    return {"in_flight": tally(in_flight), "streams_ended_s_after_kill": round(ended_s, 2),
            "while_down": down,
            "restart_s": round(restart_s, 1), "recovered_s": round(recovered, 2)}


async def _while_down(f: Faults, tier: str) -> dict[str, Any]:
    """Requests while ``tier`` is dead: the other tier's policies still answer; cascade
    and auto answer from the edge while the cloud is down."""
    policies = ("cascade", "auto", "cloud") if tier == "cloud" else ("cloud", "edge")
    # What is promised is the fallback, not its speed: the deadline leaves the remaining
    # tier room to answer on a loaded machine (its admission wants twice the time it
    # predicts, and a busy CI machine made one edge answer take ~10 s).
    results = await f.mixed(f"{tier} down", DOWN_DEADLINE_S, policies)
    out: dict[str, Any] = {}
    for policy in policies:
        mine = [r for p, _, r in results if p == policy]
        out[policy] = tally(mine)
        if policy in ("cascade", "auto") or (tier == "edge" and policy == "cloud"):
            f.report.check(all(r.ok for r in mine),
                           f"{tier} down: {policy} failed: {[r.code for r in mine]}")
    return out
