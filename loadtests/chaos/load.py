"""Scenarios 5 and 6: overload and a noisy neighbour.

Overload: closed-loop clients, several times what the stack serves at once, each sending
its next request as soon as the last ended (after the retry-after hint when refused).
Admitted requests finish within their deadline (the SLO); the rest are refused
RESOURCE_EXHAUSTED with a retry-after hint before any model work (fast); afterwards the
tiers are idle and healthy. Goodput (answers within the SLO per second) is reported.

Noisy neighbour: one tenant floods; another tenant's requests keep their latency within
1.5x of running alone."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from tandem.loadtests.chaos.calls import Result, Router, latency_ms, percentile, request, stream, tally
from tandem.loadtests.chaos.scenario import Report, timed
from tandem.loadtests.chaos.storm import tier_loads
from tandem.loadtests.chaos.stack import CROWD, Target, metric

OVERLOAD = ("admitted requests finish within their deadline; the rest are refused "
            "RESOURCE_EXHAUSTED with retry-after before model work; idle and healthy after")
NOISY = "a flooding tenant leaves another tenant's latency within 1.5x of alone"
PROMPT = "Tell me one fact about the ocean."
REFUSAL_P99_LIMIT_S = 0.5
NOISY_LIMIT = 1.5


@dataclass
class LoadSettings:
    duration_s: float = 30.0
    clients: int = 144  # about 4x what the default stack runs at once (4 slots + 32 seqs)
    deadline_s: float = 15.0  # each request's deadline: the SLO
    max_tokens: int = 32
    victim_requests: int = 8
    flood_clients: int = 24


async def closed_loop(router: Router, target: Target, tenant: str, policy: str,
                      settings: LoadSettings, until: float, results: list[Result]) -> None:
    """Send back to back until ``until``, honouring retry-after on refusals."""
    while time.monotonic() < until:
        result = await stream(router.stub, request(PROMPT, policy, settings.max_tokens,
                                                   temperature=0.7),
                              settings.deadline_s, target.metadata(tenant))
        results.append(result)
        if result.code == "RESOURCE_EXHAUSTED":
            await asyncio.sleep(max((result.retry_after_ms or 100) / 1e3, 0.05))


async def settle(target: Target, report: Report, label: str) -> float | None:
    """Seconds until both tiers' queues are empty and nothing runs (at most 30 s)."""
    async def idle() -> bool:
        loads = await tier_loads(target)
        return all(load.queued == 0 and load.running == 0 for load in loads.values())

    started = time.monotonic()
    while time.monotonic() - started < 30:
        if await idle():
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    report.failures.append(f"{label}: the tiers were not idle 30 s after the load")
    return None


async def overload(target: Target, settings: LoadSettings) -> Report:
    report = Report("overload", OVERLOAD)
    await timed(report, _overload(target, settings, report))
    return report


async def _overload(target: Target, settings: LoadSettings, report: Report) -> None:
    predictions_before = predictions(target)
    refusals_before = router_refusals(target)
    until = time.monotonic() + settings.duration_s
    by_policy: dict[str, list[Result]] = {policy: [] for policy in ("auto", "cloud", "edge")}
    policies = list(by_policy)
    async with Router(target.router) as router:
        # Many tenants: the load is the stack's, not one tenant's (whose cap would shed it).
        await asyncio.gather(*(closed_loop(router, target, CROWD[i % len(CROWD)],
                                           policies[i % 3], settings, until,
                                           by_policy[policies[i % 3]])
                               for i in range(settings.clients)))
        idle_s = await settle(target, report, "overload")
        after = await stream(router.stub, request(PROMPT, "cloud", 4), 60, target.metadata("load"))
    results = [r for outcomes in by_policy.values() for r in outcomes]
    admitted = [r for r in results if r.code != "RESOURCE_EXHAUSTED"]
    refused = [r for r in results if r.code == "RESOURCE_EXHAUSTED"]
    good = [r for r in admitted if r.ok and r.seconds <= settings.deadline_s]
    refusal_p99 = percentile([r.seconds for r in refused], 0.99)
    report.measured.update(
        clients=settings.clients, duration_s=settings.duration_s, requests=len(results),
        statuses=tally(results), admitted_latency_ms=latency_ms(admitted),
        admitted_ttft_ms_p50=_ms(percentile([r.first_chunk_s for r in admitted
                                             if r.first_chunk_s], 0.5)),
        refusal_latency_ms=latency_ms(refused),
        refusals_with_retry_after=sum(1 for r in refused if r.retry_after_ms),
        refused_by=refusal_sources(refused),
        by_policy={policy: _policy_figures(outcomes) for policy, outcomes in by_policy.items()},
        admission_time_ratio=prediction_accuracy(predictions_before, predictions(target)),
        router_refusal_ms=bucket_quantiles(refusals_before, router_refusals(target)),
        goodput_rps=round(len(good) / settings.duration_s, 2),
        slo_met=round(len(good) / max(len(admitted), 1), 3), idle_after_s=idle_s,
        answer_after=after.code)
    report.check(bool(refused), "nothing was refused: the load did not exceed capacity")
    report.check(all(r.retry_after_ms for r in refused), "a refusal came without retry-after")
    report.check(refusal_p99 is None or refusal_p99 <= REFUSAL_P99_LIMIT_S,
                 f"refusals took {refusal_p99 or 0:.2f} s (p99): not before model work")
    report.check(len(good) >= 0.95 * len(admitted),
                 f"admitted requests missed their deadline: {tally(admitted)}")
    report.check(after.ok, f"no answer after the overload: {after.code}")


def refusal_sources(refused: list[Result]) -> dict[str, int]:
    """Who refused: the router's per-tenant cap, or a tier's queue (by its message)."""
    sources: dict[str, int] = {}
    for r in refused:
        source = ("tenant_cap" if "requests in flight" in r.details
                  else "cloud" if "cloud" in r.details
                  else "edge" if "edge" in r.details else "other")
        sources[source] = sources.get(source, 0) + 1
    return sources


def predictions(target: Target) -> dict[str, tuple[float, float, float]]:
    """Per tier: (count, sum, count at most 1.0) of its admission_time_ratio histogram."""
    out = {}
    for tier in ("cloud", "edge"):
        if tier in target.metrics:
            samples, name = target.scrape(tier), f"tandem_{tier}_admission_time_ratio"
            out[tier] = (metric(samples, f"{name}_count"), metric(samples, f"{name}_sum"),
                         metric(samples, f"{name}_bucket", le="1.0"))
    return out


def router_refusals(target: Target) -> dict[float, float]:
    """The router's refusal-latency histogram: cumulative count per bucket bound."""
    if "router" not in target.metrics:
        return {}
    samples = target.scrape("router")
    bounds = {key.split('le="')[1].split('"')[0] for key in samples
              if key.startswith("tandem_router_refusal_seconds_bucket")}
    return {float(b): metric(samples, "tandem_router_refusal_seconds_bucket", le=b)
            for b in bounds}


def bucket_quantiles(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """p50 / p99 of the refusals in the window, as the bucket bound (ms) they fall under:
    the router's own time from arrival to refusal, without the load generator's lag."""
    counts = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = counts[-1][1] if counts else 0.0

    def under(q: float) -> float | None:
        for bound, count in counts:
            if total and count >= q * total:
                return bound * 1e3 if bound != float("inf") else None
        return None

    return {"refusals": int(total), "p50_at_most": under(0.5), "p99_at_most": under(0.99)}


def prediction_accuracy(before: dict[str, tuple[float, float, float]],
                        after: dict[str, tuple[float, float, float]]) -> dict[str, Any]:
    """How long admitted requests took over what admission predicted, per tier, in the
    window: the mean ratio and the share that took no longer than predicted."""
    out: dict[str, Any] = {}
    for tier, (count, total, within) in after.items():
        c0, t0, w0 = before.get(tier, (0.0, 0.0, 0.0))
        n = count - c0
        out[tier] = {"requests": int(n), "mean": round((total - t0) / n, 2) if n else None,
                     "within_prediction": round((within - w0) / n, 3) if n else None}
    return out


def _policy_figures(results: list[Result]) -> dict[str, Any]:
    refused = [r for r in results if r.code == "RESOURCE_EXHAUSTED"]
    return {"statuses": tally(results),
            "admitted_latency_ms": latency_ms([r for r in results if r.code != "RESOURCE_EXHAUSTED"]),
            "refusal_latency_ms": latency_ms(refused), "refused_by": refusal_sources(refused)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 1)


NOISY_ROUNDS = 4  # alone, then beside the flood, this many times


async def noisy_neighbour(target: Target, settings: LoadSettings, policy: str = "cloud") -> Report:
    report = Report("noisy_neighbour", NOISY)
    await timed(report, _noisy(target, settings, policy, report))
    return report


async def _victim(router: Router, target: Target, count: int, settings: LoadSettings,
                  policy: str) -> list[Result]:
    out = []
    for _ in range(count):
        out.append(await stream(router.stub, request(PROMPT, policy, settings.max_tokens),
                                60.0, target.metadata("bob")))
    return out


async def _noisy(target: Target, settings: LoadSettings, policy: str, report: Report) -> None:
    # The victim's requests alone and beside the flood alternate, a few of each per round:
    # this machine's speed drifts by a third within seconds (alone, the same request took
    # 330-550 ms in one minute), so two blocks measured apart compare phases, not tenants.
    alone: list[Result] = []
    beside: list[Result] = []
    flood: list[Result] = []
    per_round = max(settings.victim_requests // NOISY_ROUNDS, 1)
    async with Router(target.router) as router:
        for _ in range(NOISY_ROUNDS):
            alone += await _victim(router, target, per_round, settings, policy)
            until = time.monotonic() + 3600
            flooders = [asyncio.ensure_future(closed_loop(router, target, "mallory", policy,
                                                          settings, until, flood))
                        for _ in range(settings.flood_clients)]
            await asyncio.sleep(2.0)  # the flood is under way
            beside += await _victim(router, target, per_round, settings, policy)
            for task in flooders:
                task.cancel()
            await asyncio.gather(*flooders, return_exceptions=True)
            await settle(target, report, "noisy neighbour")
    p50_alone = percentile([r.seconds for r in alone], 0.5) or 0.0
    p50_beside = percentile([r.seconds for r in beside], 0.5) or 0.0
    ratio = p50_beside / p50_alone if p50_alone else float("inf")
    report.measured.update(
        policy=policy, flood_clients=settings.flood_clients, victim_alone_ms=latency_ms(alone),
        victim_with_flood_ms=latency_ms(beside), ratio_p50=round(ratio, 2),
        victim_statuses=tally(beside), flood_statuses=tally(flood))
    report.check(all(r.ok for r in alone + beside), f"victim requests failed: {tally(beside)}")
    report.check(ratio <= NOISY_LIMIT, f"victim p50 latency {ratio:.2f}x alone (limit "
                                       f"{NOISY_LIMIT}x)")


def figures(report: Report) -> dict[str, Any]:
    return report.measured
