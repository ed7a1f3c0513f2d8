"""Scenario 4, disconnect storm: many streams opened at once, each cancelled by its client
after its first chunk. All tier work stops (the tiers' token and step counters are flat
within 1 s of the last cancel), the KV blocks, slots and speculative sessions are freed
(the gauges and each tier's Load back to idle) and each service's memory is back within
5 % of before (measured after a first, unmeasured storm has warmed the allocators)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc

from tandem.loadtests.chaos.calls import Router, request, stream, tally
from tandem.loadtests.chaos.scenario import Report, timed, wait_until
from tandem.loadtests.chaos.stack import CROWD, Target, metric, open_fds, rss_bytes
from tandem.v1 import cloud_pb2_grpc, common_pb2, edge_pb2_grpc

PROMISE = ("tier work stops within 1 s of the cancels, KV/slots/sessions freed (gauges idle), "
           "RSS within 5 % of before")
WORK_COUNTERS = {"cloud": ("tandem_cloud_generated_tokens_total", "tandem_cloud_engine_steps_total"),
                 "edge": ("tandem_edge_generated_tokens_total",)}
POLICIES = ("edge", "cloud", "speculative", "cloud")
FLAT_LIMIT_S = 1.0
RSS_LIMIT = 0.05


@dataclass
class StormSettings:
    streams: int = 200
    max_tokens: int = 128
    idle_timeout_s: float = 10.0  # for the gauges to read idle


def work(target: Target) -> tuple[float, ...]:
    samples = {tier: target.scrape(tier) for tier in WORK_COUNTERS}
    return tuple(metric(samples[tier], name) for tier, names in WORK_COUNTERS.items()
                 for name in names)


async def tier_loads(target: Target) -> dict[str, common_pb2.TierLoad]:
    loads = {}
    for tier, stub_class in (("cloud", cloud_pb2_grpc.CloudStub), ("edge", edge_pb2_grpc.EdgeStub)):
        async with grpc.aio.insecure_channel(getattr(target, tier)) as channel:
            loads[tier] = await stub_class(channel).Load(
                common_pb2.LoadRequest(), timeout=5, metadata=target.tier_metadata())
    return loads


def gauges(target: Target) -> dict[str, float]:
    cloud = target.scrape("cloud")
    return {"cloud_running": metric(cloud, "tandem_cloud_num_requests_running"),
            "cloud_waiting": metric(cloud, "tandem_cloud_num_requests_waiting"),
            "cloud_kv_usage": metric(cloud, "tandem_cloud_kv_cache_usage_perc"),
            "cloud_sessions": metric(cloud, "tandem_cloud_sessions")}


def idle_again(now: dict[str, float], idle: dict[str, float]) -> bool:
    """No request running, waiting or holding a session, and no more KV referenced than
    before the storm (blocks only the prefix cache holds count as free)."""
    return (all(now[k] == idle[k] for k in idle if k != "cloud_kv_usage")
            and now["cloud_kv_usage"] <= idle["cloud_kv_usage"])


def memory(target: Target, pids: dict[str, int]) -> dict[str, dict[str, int]]:
    return {name: {"rss": rss_bytes(pid), "fds": open_fds(pid)} for name, pid in pids.items()}


async def storm(target: Target, settings: StormSettings) -> tuple[dict[str, int], float]:
    """Open every stream at once, cancel each after its first chunk; returns the statuses
    and when the last one ended."""
    async with Router(target.router) as router:
        results = await asyncio.gather(*(
            stream(router.stub, request(f"Storm {i}: write a long story about a lighthouse.",
                                        POLICIES[i % len(POLICIES)], settings.max_tokens),
                   120.0, target.metadata(CROWD[i % len(CROWD)]), stop_after_chunks=1)
            for i in range(settings.streams)))
    return tally(results), time.monotonic()


async def flat_after(target: Target, since: float, quiet_s: float = 2.0) -> float:
    """Seconds from ``since`` to the last change of the tiers' work counters (polled every
    100 ms until they have not changed for ``quiet_s``)."""
    last, changed_at = await asyncio.to_thread(work, target), since
    while time.monotonic() - changed_at < quiet_s:
        await asyncio.sleep(0.1)
        now = await asyncio.to_thread(work, target)
        if now != last:
            last, changed_at = now, time.monotonic()
    return max(changed_at - since, 0.0)


async def run(target: Target, settings: StormSettings, pids: dict[str, int]) -> Report:
    report = Report("disconnect_storm", PROMISE)
    await timed(report, _run(target, settings, pids, report))
    return report


async def _run(target: Target, settings: StormSettings, pids: dict[str, int],
               report: Report) -> None:
    await storm(target, settings)  # warms the allocators: the measured storm comes second
    await flat_after(target, time.monotonic())
    idle = gauges(target)
    before = memory(target, pids)
    statuses, ended = await storm(target, settings)
    flat = await flat_after(target, ended)
    settled = await wait_until(lambda: idle_again(gauges(target), idle),
                               settings.idle_timeout_s, 0.2)
    loads = await tier_loads(target)
    after = memory(target, pids)
    growth = {n: round(after[n]["rss"] / before[n]["rss"] - 1, 4) for n in pids}
    report.measured.update(
        streams=settings.streams, statuses=statuses, work_flat_after_s=round(flat, 2),
        gauges_idle_after_s=None if settled is None else round(settled, 2),
        gauges=gauges(target), idle_gauges=idle,
        loads={t: {"queued": load.queued, "running": load.running} for t, load in loads.items()},
        rss_mb_before={n: round(m["rss"] / 2**20, 1) for n, m in before.items()},
        rss_mb_after={n: round(m["rss"] / 2**20, 1) for n, m in after.items()},
        rss_growth=growth, fds_before={n: m["fds"] for n, m in before.items()},
        fds_after={n: m["fds"] for n, m in after.items()})
    report.check(flat <= FLAT_LIMIT_S, f"tier work went on {flat:.2f} s after the cancels")
    report.check(settled is not None, f"gauges not back to idle: {gauges(target)} vs {idle}")
    report.check(all(load.queued == 0 and load.running == 0 for load in loads.values()),
                 f"a tier is still busy: {report.measured['loads']}")
    report.check(all(g <= RSS_LIMIT for g in growth.values()), f"RSS grew: {growth}")
    report.check(all(after[n]["fds"] <= before[n]["fds"] + 2 for n in pids),
                 "file descriptors leaked")


def summary(report: Report) -> dict[str, Any]:
    return {k: report.measured.get(k) for k in ("statuses", "work_flat_after_s", "rss_growth")}
