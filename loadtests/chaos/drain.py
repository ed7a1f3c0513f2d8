"""Scenario 8, graceful drain: SIGTERM to the router, the edge and the cloud (one at a
time) with streams in flight. Health turns NOT_SERVING at once, new calls are refused
UNAVAILABLE, the streams in flight finish whole (nothing lost), the process exits by
itself within its drain timeout, and a drained router leaves no speculative session's
KV on the cloud. Each service is started again afterwards."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from tandem.loadtests.chaos.calls import Result, Router, request, stream, tally
from tandem.loadtests.chaos.scenario import Report, timed_if_breakable, wait_until
from tandem.loadtests.chaos.stack import CROWD, ChaosStack, metric
from tandem.shared.process import health_status
from tandem.v1 import common_pb2

PROMISE = ("health NOT_SERVING at once, new calls UNAVAILABLE, streams in flight finish "
           "whole, exit within the drain timeout, no session KV left on the cloud")
POLICIES = {"router": ("cloud", "speculative"), "edge": ("edge",), "cloud": ("cloud",)}
NOT_SERVING_LIMIT_S = 0.5
DRAIN_TIMEOUT_S = 30.0  # the services' default drain_seconds


@dataclass
class DrainSettings:
    streams: int = 5
    max_tokens: int = 48


async def run(stack: ChaosStack, settings: DrainSettings) -> Report:
    report = Report("graceful_drain", PROMISE)
    return await timed_if_breakable(report, stack, "services are stopped",
                                    lambda: _run(stack, settings, report))


async def _run(stack: ChaosStack, settings: DrainSettings, report: Report) -> None:
    for service in ("router", "edge", "cloud"):
        report.measured[service] = await _drain(stack, settings, service, report)


def _status(address: str) -> str:
    try:
        return health_pb2.HealthCheckResponse.ServingStatus.Name(health_status(address, 1.0))
    except grpc.RpcError as exc:
        return f"unreachable ({exc.code().name})"


async def _new_call(stack: ChaosStack, service: str) -> str:
    """A new call to the draining service (direct, so that its own answer is seen)."""
    if service == "router":
        async with Router(stack.router) as router:
            return (await stream(router.stub, request("Say hi.", "edge", 2), 10,
                                 stack.metadata("alice"))).code
    address = stack.processes[service].address
    body = common_pb2.TierGenerateRequest(prompt="Say hi.",
                                          sampling=common_pb2.SamplingParams(max_tokens=2))
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await channel.unary_unary(f"/tandem.v1.{service.capitalize()}/Generate")(
                body.SerializeToString(), timeout=10, metadata=stack.tier_metadata())
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name


async def _drain(stack: ChaosStack, settings: DrainSettings, service: str,
                 report: Report) -> dict[str, Any]:
    address = stack.processes[service].address
    sessions0 = metric(stack.scrape("cloud"), "tandem_cloud_sessions")
    policies = POLICIES[service]
    firsts = [asyncio.Event() for _ in range(settings.streams)]
    async with Router(stack.router) as router:
        tasks = [asyncio.ensure_future(stream(
            router.stub, request(f"Drain {i}: write a short story about a cat.",
                                 policies[i % len(policies)], settings.max_tokens),
            120.0, stack.metadata(CROWD[i]), first_chunk=firsts[i]))
            for i in range(settings.streams)]
        await asyncio.gather(*(event.wait() for event in firsts))
        term_at = time.monotonic()
        stack.signal(service, signal.SIGTERM)
        not_serving = await wait_until(lambda: _status(address) == "NOT_SERVING",
                                       NOT_SERVING_LIMIT_S * 4, 0.02)
        refused = await _new_call(stack, service)
        results: list[Result] = await asyncio.gather(*tasks)
    exit_code = await asyncio.to_thread(stack.wait_exit, service, DRAIN_TIMEOUT_S + 5)
    exited_s = time.monotonic() - term_at
    sessions = await wait_until(
        lambda: metric(stack.scrape("cloud"), "tandem_cloud_sessions") <= sessions0, 5.0, 0.1) \
        if service == "router" else 0.0
    label = f"drain {service}"
    report.check(not_serving is not None and not_serving <= NOT_SERVING_LIMIT_S,
                 f"{label}: health not NOT_SERVING within {NOT_SERVING_LIMIT_S} s ({not_serving})")
    report.check(refused == "UNAVAILABLE", f"{label}: a new call got {refused}")
    report.check(all(r.ok and r.final is not None and r.final.finish_reason for r in results),
                 f"{label}: streams in flight were cut: {tally(results)}")
    report.check(exit_code == 0, f"{label}: exit code {exit_code} after {exited_s:.1f} s")
    report.check(sessions is not None, f"{label}: the cloud kept speculative sessions")
    restart_s = await asyncio.to_thread(stack.restart, service)
    return {"streams": tally(results), "not_serving_after_s": not_serving,
            "new_call": refused, "exit_code": exit_code, "exited_after_s": round(exited_s, 2),
            "tokens_per_stream": sorted({len(r.token_ids) for r in results}),
            "restart_s": round(restart_s, 1)}
