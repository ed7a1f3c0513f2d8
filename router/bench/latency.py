"""`tandem bench router`: the latency the router adds itself (policy decision and state
access), per policy, with a real redis-server beside the in-memory store.

One cloud and one edge serve two routers that differ only in their state store. Requests
alternate between the two routers, so both see the same load. Every request exercises
the router's state:
- sessions: of every three requests to a tenant, two are turns of one session (history
  read, turn appended) and one has no session (response-cache lookup and put);
- admission: a rate limit and a token budget (reserve, refund), both generous;
- statistics for every request, and the cascade threshold kept by the budget controller.

The figures come from the router itself: the final chunk's Timings (router/latency.py
says what each part includes), read back over gRPC. A second, in-process measurement
profiles the state work of one session turn against the same redis-server, the way the
router does it (history beside admission, then completion: 2 round trips in sequence)
beside the per-operation calls it made before (6 round trips), alternating.

The HTTP front is measured against gRPC on the Redis router: the same request (edge
policy, greedy) sent as a gRPC Generate and as a non-streamed POST /v1/chat/completions,
alternating, timed by the client. Once with a tenant per request (every request runs the
model) and once repeated under one tenant per front (answered from the response cache:
the fronts' own cost, with no model time to hide it).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tandem.router.bench.prompts import DEFAULT_PROMPTS
from tandem.router.state import Completion, Limits, StateStore
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc

POLICIES = "edge,cloud,cascade,speculative,auto"
TARGET_P50_MS = 2.0
STORES = ("redis", "memory")
# Admission and budget-controller settings that exercise the state without rejecting.
ROUTER_ARGS = ["--rate-limit-rps", "1000", "--rate-limit-burst", "1000",
               "--token-budget", "10000000", "--response-cache-seconds", "600",
               "--target-escalation-rate", "0.5"]
# Timings field -> column name (ms).
PARTS = {"state_ns": "state", "decision_ns": "decision", "scoring_ns": "scoring",
         "overhead_ns": "overhead", "total_ns": "total"}


HELP = "Router-added latency (decision + state), Redis vs in-memory state, per policy."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policies", default=POLICIES)
    p.add_argument("--requests", type=int, default=12, help="Measured requests per policy "
                                                            "and store.")
    p.add_argument("--warmup", type=int, default=1, help="Unmeasured requests per policy "
                                                         "and store first.")
    p.add_argument("--max-tokens", type=int, default=6)
    p.add_argument("--state-rounds", type=int, default=300,
                   help="Session turns in the in-process state-path profile.")
    p.add_argument("--http-requests", type=int, default=60,
                   help="Requests per front (HTTP, gRPC) and mode (model, cached) in the "
                        "HTTP-over-gRPC comparison; 0 skips it.")
    p.add_argument("--router-defaults", action="store_true",
                   help="Routers with default settings: no rate limit, token budget, response "
                        "cache or budget controller (sessions and statistics only).")


def request_for(policy: str, index: int, run_id: str) -> router_pb2.GenerateRequest:
    """Request ``index`` of ``policy``: per tenant, two session turns then one without."""
    tenant = f"bench{run_id}-{policy}-{index // 3}"
    session = "s1" if index % 3 < 2 else ""
    return router_pb2.GenerateRequest(
        prompt=DEFAULT_PROMPTS[index % len(DEFAULT_PROMPTS)], policy=policy, tenant=tenant,
        session_id=session, sampling=common_pb2.SamplingParams(temperature=0.0))


def measure(stubs: dict[str, router_pb2_grpc.RouterStub], policies: list[str], requests: int,
            warmup: int, max_tokens: int) -> dict[tuple[str, str], list[common_pb2.Timings]]:
    """Timings of every measured request, by (store, policy); stores alternate per request
    (and which goes first alternates too), so load drift hits both alike."""
    run_id = str(time.monotonic_ns())
    samples: dict[tuple[str, str], list[common_pb2.Timings]] = {
        (s, p): [] for s in stubs for p in policies}
    for policy in policies:
        for index in range(warmup + requests):
            request = request_for(policy, index, run_id)
            request.sampling.max_tokens = max_tokens
            order = list(stubs) if index % 2 == 0 else list(reversed(stubs))
            for store in order:
                reply = stubs[store].Generate(request, timeout=600)
                if index >= warmup:
                    samples[(store, policy)].append(reply.timings)
    return samples


def summarize(store: str, policy: str, timings: list[common_pb2.Timings]) -> dict[str, Any]:
    """p50/p95/p99 in ms of router-added latency (state + decision) and of each part."""
    columns = {"added": [t.state_ns + t.decision_ns for t in timings]}
    columns.update({name: [getattr(t, field) for t in timings] for field, name in PARTS.items()})
    row: dict[str, Any] = {"store": store, "policy": policy, "requests": len(timings)}
    for name, values in columns.items():
        ms = np.asarray(values, dtype=np.float64) / 1e6
        row[f"{name}_ms"] = {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 95, 99)}
    return row


async def _per_operation(store: StateStore, tenant: str, turns: list[dict[str, str]]) -> None:
    """One session turn's state work as separate calls (the router before batching)."""
    await store.history(tenant, "s")
    await store.take_request(tenant, 1000, 1000)
    await store.reserve_tokens(tenant, 8, 10_000_000, 60)
    await store.append(tenant, "s", turns, 600)
    await store.refund_tokens(tenant, 2, 60)
    await store.add_stats("bench", {"requests": 1, "edge_tokens": 6})


async def _batched(store: StateStore, tenant: str, turns: list[dict[str, str]]) -> None:
    """The same work as the router does it now: history beside admission, then complete."""
    await asyncio.gather(store.history(tenant, "s"),
                         store.admit(Limits(tenant, 1000, 1000, 8, 10_000_000, 60)))
    await store.complete(Completion(tenant, "bench", {"requests": 1, "edge_tokens": 6},
                                    session_id="s", turns=turns, session_ttl_s=600,
                                    refund_tokens=2, budget_window_s=60))


async def _profile_state(store: StateStore, rounds: int) -> dict[str, dict[str, float]]:
    """p50/p95 (us) of one session turn's state work, both ways, alternating; each round
    uses a fresh tenant so histories stay one turn long."""
    turns = [{"role": "user", "content": "Name a fruit."},
             {"role": "assistant", "content": "An apple."}]
    samples: dict[str, list[int]] = {"per_operation": [], "batched": []}
    run_id = time.monotonic_ns()
    paths = [("per_operation", _per_operation), ("batched", _batched)]
    for i in range(rounds + 20):  # the first 20 warm connections and script caches
        for name, path in paths if i % 2 == 0 else paths[::-1]:
            started = time.perf_counter_ns()
            await path(store, f"prof{run_id}-{name}-{i}", turns)
            if i >= 20:
                samples[name].append(time.perf_counter_ns() - started)
    await store.close()
    return {name: {f"p{q}": round(float(np.percentile(v, q)) / 1e3, 1) for q in (50, 95)}
            for name, v in samples.items()}


def profile_state(redis_url: str, rounds: int) -> dict[str, dict[str, dict[str, float]]]:
    from tandem.router.state.memory import MemoryStateStore
    from tandem.router.state.redis_store import RedisStateStore

    return {"redis": asyncio.run(_profile_state(RedisStateStore(redis_url), rounds)),
            "memory": asyncio.run(_profile_state(MemoryStateStore(), rounds))}


def _http_call(connection: http.client.HTTPConnection, request: router_pb2.GenerateRequest
               ) -> None:
    body = {"model": f"tandem-{request.policy}", "tenant": request.tenant,
            "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": request.sampling.max_tokens, "temperature": 0}
    # Bytes, so http.client sends headers and body in one write: two small writes meet
    # Nagle's algorithm and the server's delayed ACK, 40 ms each time.
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    try:
        connection.request("POST", "/v1/chat/completions", payload, headers)
    except (BrokenPipeError, ConnectionResetError):  # closed while idle (keep-alive timeout)
        connection.close()
        connection.request("POST", "/v1/chat/completions", payload, headers)
    reply = connection.getresponse()
    payload = reply.read()
    if reply.status != 200:
        raise RuntimeError(f"HTTP {reply.status}: {payload[:300]!r}")


def measure_fronts(stub: router_pb2_grpc.RouterStub, http_port: int, requests: int,
                   max_tokens: int) -> dict[str, Any]:
    """Client-side latency of the same request over gRPC and HTTP, alternating (which
    front goes first alternates too), in two modes: "model" (a fresh tenant per request,
    so nothing is cached) and "cached" (one tenant per front, the answer cached)."""
    run_id = time.monotonic_ns()
    connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=600)
    report: dict[str, Any] = {}
    try:
        for mode in ("model", "cached"):
            samples: dict[str, list[float]] = {"grpc": [], "http": []}
            for index in range(requests + 3):  # 3 unmeasured: connections, cache entries
                for front in ("grpc", "http") if index % 2 == 0 else ("http", "grpc"):
                    tenant = (f"fronts{run_id}-{front}" if mode == "cached"
                              else f"fronts{run_id}-{index}-{front}")
                    request = router_pb2.GenerateRequest(
                        prompt=DEFAULT_PROMPTS[index % len(DEFAULT_PROMPTS)] if mode == "model"
                        else DEFAULT_PROMPTS[0], policy="edge", tenant=tenant,
                        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0))
                    started = time.perf_counter()
                    if front == "grpc":
                        stub.Generate(request, timeout=600)
                    else:
                        _http_call(connection, request)
                    if index >= 3:
                        samples[front].append((time.perf_counter() - started) * 1e3)
            grpc_ms, http_ms = (np.asarray(samples[f]) for f in ("grpc", "http"))
            report[mode] = {
                "grpc_p50_ms": round(float(np.median(grpc_ms)), 3),
                "http_p50_ms": round(float(np.median(http_ms)), 3),
                "http_added_p50_ms": round(float(np.median(http_ms) - np.median(grpc_ms)), 3),
                "paired_difference_p50_ms": round(float(np.median(http_ms - grpc_ms)), 3)}
    finally:
        connection.close()
    return report


def table(report: dict[str, Any]) -> str:
    head = (f"{'store':<7} {'policy':<12} {'added p50':>9} {'p95':>7} {'p99':>7} "
            f"{'state p50':>9} {'decision p50':>12} {'scoring p50':>11} {'overhead p50':>12} "
            f"{'total p50':>9}")
    lines = [head, "(ms; added = state + decision, the target's figure; scoring = embedding "
                   "model, reported apart)"]
    for r in report["results"]:
        a = r["added_ms"]
        lines.append(f"{r['store']:<7} {r['policy']:<12} {a['p50']:>9.3f} {a['p95']:>7.3f} "
                     f"{a['p99']:>7.3f} {r['state_ms']['p50']:>9.3f} "
                     f"{r['decision_ms']['p50']:>12.3f} {r['scoring_ms']['p50']:>11.3f} "
                     f"{r['overhead_ms']['p50']:>12.3f} {r['total_ms']['p50']:>9.1f}")
    lines.append("state work of one session turn, in-process (us): " + ", ".join(
        f"{store} {name} p50 {v['p50']:.0f} p95 {v['p95']:.0f}"
        for store, paths in report["state_path_us"].items() for name, v in paths.items()))
    for mode, row in report.get("http_over_grpc", {}).items():
        lines.append(f"HTTP over gRPC, same request ({mode}): p50 gRPC {row['grpc_p50_ms']:.2f} "
                     f"ms, HTTP {row['http_p50_ms']:.2f} ms, added {row['http_added_p50_ms']:.2f}"
                     f" ms (paired p50 {row['paired_difference_p50_ms']:.2f} ms)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tandem.shared.process import RedisProcess, ServiceProcess, free_port

    policies = args.policies.split(",")
    services: list[ServiceProcess] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis = RedisProcess(free_port(), workdir)
        try:
            redis.wait_ready()
            state_paths = profile_state(redis.url, args.state_rounds)
            for name in ("cloud", "edge"):
                services.append(ServiceProcess(name, ["--port", "0", "--metrics-port", "-1"],
                                               workdir))
                services[-1].wait_ready(600)
            cloud, edge = services
            routers = {}
            for store, url in zip(STORES, (redis.url, "memory")):
                own = workdir / store  # each router its own log and ready file
                own.mkdir()
                routers[store] = ServiceProcess("router", [
                    "--port", "0", "--metrics-port", "-1", "--cloud-address", cloud.address,
                    "--edge-address", edge.address, "--state", url,
                    *([] if args.router_defaults else ROUTER_ARGS)], own)
                services.append(routers[store])
                routers[store].wait_ready(600)
            channels = {s: grpc.insecure_channel(r.address) for s, r in routers.items()}
            try:
                stubs = {s: router_pb2_grpc.RouterStub(c) for s, c in channels.items()}
                samples = measure(stubs, policies, args.requests, args.warmup, args.max_tokens)
                fronts = (measure_fronts(stubs["redis"], routers["redis"].http_port or 0,
                                         args.http_requests, args.max_tokens)
                          if args.http_requests > 0 else {})
            finally:
                for channel in channels.values():
                    channel.close()
        finally:
            for service in reversed(services):
                service.stop()
            redis.stop()
    rows = [summarize(store, policy, samples[(store, policy)])
            for store in STORES for policy in policies]
    redis_rows = [r for r in rows if r["store"] == "redis"]
    report = {"max_tokens": args.max_tokens, "requests_per_policy": args.requests,
              "router_args": [] if args.router_defaults else ROUTER_ARGS,
              "target_p50_ms": TARGET_P50_MS,
              "target_met": all(r["added_ms"]["p50"] <= TARGET_P50_MS for r in redis_rows),
              "results": rows, "state_path_us": state_paths, "http_over_grpc": fronts}
    if fronts:
        report["http_target_p50_ms"] = TARGET_P50_MS
        report["http_target_met"] = fronts["model"]["http_added_p50_ms"] <= TARGET_P50_MS
    return report
