"""Scenario 0, one request fails or slows only itself: a request whose sampling values
overflow (repetition_penalty 1e-40) is refused alone while the requests batched with it
answer; a prompt of megabytes is refused at once while a small request beside it answers
promptly, and the router's memory does not balloon."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tandem.loadtests.chaos.calls import Router, request, stream, tally
from tandem.loadtests.chaos.scenario import Report, timed
from tandem.loadtests.chaos.stack import CROWD, Target, rss_bytes

PROMISE = ("a poisoned request fails alone (the batch answers); a huge prompt is refused "
           "at once while a small request beside it answers promptly; router memory bounded")
BESIDE_LIMIT_S = 5.0  # the small request beside a huge prompt
REFUSE_LIMIT_S = 5.0
RSS_LIMIT_MB = 200.0


@dataclass
class EngineSettings:
    batch: int = 4
    huge_prompt_mb: int = 10


async def run(target: Target, settings: EngineSettings, router_pid: int | None) -> Report:
    report = Report("one_request_fails_alone", PROMISE)
    await timed(report, _run(target, settings, router_pid, report))
    return report


async def _run(target: Target, settings: EngineSettings, router_pid: int | None,
               report: Report) -> None:
    key = target.metadata("alice")  # the poisoned request's and the huge prompt's tenant
    async with Router(target.router) as router:
        poison = request("Write a sentence about rain.", "cloud", 16, temperature=0.7)
        poison.sampling.repetition_penalty = 1e-40
        # The batch beside it: other tenants' requests.
        batch = [stream(router.stub, request(f"Count to {i + 3}.", "cloud", 16), 60,
                        target.metadata(CROWD[i])) for i in range(settings.batch)]
        results = await asyncio.gather(stream(router.stub, poison, 60, key), *batch)
        report.measured["poisoned"] = results[0].code
        report.measured["batch"] = tally(results[1:])
        report.check(results[0].code in ("OK", "INVALID_ARGUMENT"),
                     f"the poisoned request ended {results[0].code}")
        report.check(all(r.ok for r in results[1:]), f"its batch failed: {tally(results[1:])}")
        rss0 = rss_bytes(router_pid) if router_pid else 0
        huge = request("x " * (settings.huge_prompt_mb * 2**19), "edge", 2)
        big, small = await asyncio.gather(
            stream(router.stub, huge, 60, key),
            stream(router.stub, request("Say hi.", "edge", 2), 60, target.metadata("bob")))
        grew = (rss_bytes(router_pid) - rss0) / 2**20 if router_pid else 0.0
    report.measured.update(huge_prompt={"code": big.code, "seconds": round(big.seconds, 2)},
                           small_beside_s=round(small.seconds, 2),
                           router_rss_growth_mb=round(grew, 1))
    report.check(big.code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED") and
                 big.seconds <= REFUSE_LIMIT_S, f"huge prompt: {big.code} in {big.seconds:.1f} s")
    report.check(small.ok and small.seconds <= BESIDE_LIMIT_S,
                 f"the small request beside it: {small.code} in {small.seconds:.1f} s")
    report.check(grew <= RSS_LIMIT_MB, f"router RSS grew {grew:.0f} MB")
