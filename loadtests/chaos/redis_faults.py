"""Scenario 3, Redis frozen (SIGSTOP) and killed (kill -9, then restarted from its
append-only file) under a conversational workload. Requests keep succeeding within the
state store's timeouts (fail-open), the answers given meanwhile say so
(decision.state_degraded) and the router counts it (tandem_router_state_fallbacks_total);
no turn is doubled; a freeze loses no turn (the router replays what it kept locally); a
kill loses at most the turns acknowledged in the last ~1 s (appendfsync everysec), measured;
after the outage no spurious outage is seen again."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tandem.loadtests.chaos.calls import Result, Router, latency_ms, request, stream, tally
from tandem.loadtests.chaos.scenario import Report, timed_if_breakable
from tandem.loadtests.chaos.stack import CROWD, ChaosStack, metric

PROMISE = ("requests succeed through a frozen or restarting Redis (fail-open, labelled and "
           "counted), no turn doubled, a freeze loses no turn, a kill loses at most ~1 s of "
           "turns (AOF everysec), no spurious outage afterwards, no request hangs")
FALLBACKS = "tandem_router_state_fallbacks_total"
AOF_WINDOW_S = 1.5  # everysec: turns acknowledged longer ago than this must survive
ACK_AFTER_WRITE_S = 0.5  # a turn written before the kill may be acknowledged this much later
# An outage lasts until a turn sent during it has had this long to reach the store (its
# session is read before any model work), so that the outage is met however slowly the
# machine answers the turns already under way; at most OUTAGE_LIMIT_S.
MET_AFTER_S = 0.5
OUTAGE_LIMIT_S = 30.0


@dataclass
class RedisSettings:
    clients: int = 4  # conversations running at once
    freeze_s: float = 5.0
    down_s: float = 1.0  # between kill -9 and the restart
    before_s: float = 2.0  # workload before the fault
    after_s: float = 3.0  # workload after Redis is back
    max_tokens: int = 4


@dataclass
class Turn:
    client: int
    number: int
    sent: float
    result: Result | None = None
    acked: float = 0.0


@dataclass
class Conversations:
    """``clients`` sessions, each sending numbered turns back to back until stopped."""

    stack: ChaosStack
    settings: RedisSettings
    sessions: list[str] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    running: bool = True

    async def run(self) -> None:
        run_id = uuid.uuid4().hex[:8]
        self.sessions = [f"chaos-redis-{run_id}-{i}" for i in range(self.settings.clients)]
        async with Router(self.stack.router) as router:
            await asyncio.gather(*(self._client(router, i) for i in range(len(self.sessions))))

    async def _client(self, router: Router, client: int) -> None:
        number = 0
        while self.running:
            number += 1
            turn = Turn(client, number, time.monotonic())
            self.turns.append(turn)
            turn.result = await stream(
                router.stub, request(f"turn-{client}-{number}: say ok.", "edge",
                                     self.settings.max_tokens, session_id=self.sessions[client]),
                30.0, self.stack.metadata(CROWD[client]))
            turn.acked = time.monotonic()

    def sent_between(self, start: float, end: float) -> bool:
        return any(start <= turn.sent <= end for turn in self.turns)

    def stored(self) -> dict[int, list[int]]:
        """The user turns Redis holds for each client's session, in order."""
        import json

        import redis

        client = redis.Redis.from_url(str(self.stack.redis_url))
        try:
            out = {}
            for i, sid in enumerate(self.sessions):
                keys = list(client.scan_iter(match=f"tandem:*:session:*:{sid}"))
                raw = client.lrange(keys[0], 0, -1) if keys else []
                out[i] = [int(json.loads(t)["content"].split(":")[0].split("-")[2])
                          for t in raw if json.loads(t)["role"] == "user"]
            return out
        finally:
            client.close()


async def run(stack: ChaosStack, settings: RedisSettings) -> Report:
    report = Report("redis", PROMISE)
    return await timed_if_breakable(report, stack, "Redis is frozen and killed",
                                    lambda: _run(stack, settings, report))


async def _run(stack: ChaosStack, settings: RedisSettings, report: Report) -> None:
    report.measured["freeze"] = await _outage(stack, settings, report, "freeze")
    report.measured["kill"] = await _outage(stack, settings, report, "kill")


async def _fault(stack: ChaosStack, settings: RedisSettings, kind: str,
                 talk: Conversations) -> float:
    """Freeze or kill Redis; returns when it went away. Back when this returns."""
    started = time.monotonic()
    if kind == "freeze":
        stack.signal("redis", signal.SIGSTOP)
        try:
            await _until_met(talk, started, settings.freeze_s)
        finally:
            stack.signal("redis", signal.SIGCONT)
    else:
        stack.signal("redis", signal.SIGKILL)
        await asyncio.to_thread(stack.wait_exit, "redis", 10)
        await _until_met(talk, started, settings.down_s)
        await asyncio.to_thread(stack.restart, "redis")
    return started


async def _until_met(talk: Conversations, started: float, least_s: float) -> None:
    """Wait ``least_s``, then until a turn sent since ``started`` has met the outage."""
    await asyncio.sleep(least_s)
    while (not talk.sent_between(started, time.monotonic() - MET_AFTER_S)
           and time.monotonic() - started < OUTAGE_LIMIT_S):
        await asyncio.sleep(0.1)


async def _outage(stack: ChaosStack, settings: RedisSettings, report: Report,
                  kind: str) -> dict[str, Any]:
    talk = Conversations(stack, settings)
    fallbacks0 = metric(stack.scrape("router"), FALLBACKS)
    task = asyncio.ensure_future(talk.run())
    await asyncio.sleep(settings.before_s)
    fault_at = await _fault(stack, settings, kind, talk)
    back_at = time.monotonic()
    await asyncio.sleep(settings.after_s)
    talk.running = False
    await task
    fallbacks = metric(stack.scrape("router"), FALLBACKS) - fallbacks0
    results = [t.result for t in talk.turns if t.result is not None]
    degraded = sum(1 for r in results if r.final is not None and r.final.decision.state_degraded)
    label = f"redis {kind}"
    report.check(all(r.ok for r in results), f"{label}: requests failed: {tally(results)}")
    report.check(degraded > 0 and fallbacks > 0,
                 f"{label}: the fail-open was not visible ({degraded} labelled, "
                 f"{fallbacks:.0f} counted)")
    lost, doubled, late = _compare(talk, fault_at if kind == "kill" else None)
    report.check(not doubled, f"{label}: turns stored twice: {doubled[:5]}")
    report.check(not late, f"{label}: turns lost outside the append-only file's last second: "
                           f"{late[:5]}")
    spurious = await _spurious(stack, report, label)
    return {"requests": len(results), "statuses": tally(results), "latency_ms": latency_ms(results),
            "answers_labelled_degraded": degraded, "fallbacks_counted": int(fallbacks),
            "outage_s": round(back_at - fault_at, 2), "turns_lost": len(lost),
            "turns_lost_acked_s_before_fault": sorted({round(s, 2) for _, _, s in lost}),
            "turns_doubled": len(doubled), "fallbacks_after_recovery": spurious}


def _compare(talk: Conversations, killed_at: float | None
             ) -> tuple[list[tuple[int, int, float]], list[tuple[int, int]], list[tuple[int, int]]]:
    """(lost: acknowledged turns Redis lacks, with how long before the kill they were
    acknowledged; doubled turns; lost turns older than the AOF window)."""
    stored = talk.stored()
    lost, doubled, late = [], [], []
    for turn in talk.turns:
        if turn.result is None or not turn.result.ok:
            continue
        count = stored.get(turn.client, []).count(turn.number)
        if count > 1:
            doubled.append((turn.client, turn.number))
        if count == 0:
            before = (killed_at - turn.acked) if killed_at is not None else -1.0
            lost.append((turn.client, turn.number, before))
            # A kill may lose what was acknowledged in the last ~1 s before it (and what
            # was written just before it but acknowledged just after); nothing else.
            if killed_at is None or not -ACK_AFTER_WRITE_S <= before <= AOF_WINDOW_S:
                late.append((turn.client, turn.number))
    return lost, doubled, late


async def _spurious(stack: ChaosStack, report: Report, label: str) -> int:
    """After recovery and a pause, a burst of requests must not see an outage again (a
    stale pooled connection used to fail one and log a spurious one)."""
    await asyncio.sleep(2.0)
    before = metric(stack.scrape("router"), FALLBACKS)
    async with Router(stack.router) as router:
        burst = await asyncio.gather(*(
            stream(router.stub, request("Say ok.", "edge", 2, session_id=f"after-{uuid.uuid4().hex}"),
                   30.0, stack.metadata(CROWD[i])) for i in range(8)))
    extra = int(metric(stack.scrape("router"), FALLBACKS) - before)
    report.check(extra == 0 and all(r.ok for r in burst),
                 f"{label}: after recovery the store fell back again ({extra}) or requests "
                 f"failed: {tally(burst)}")
    return extra
