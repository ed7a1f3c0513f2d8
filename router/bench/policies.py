"""`tandem bench policies`: output tok/s per policy through one router on the same
prompts, side by side in one run, plus speculative acceptance and identity."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from tandem.router.bench.prompts import load_prompts
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc

HELP = "Output tok/s per policy through the router."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", help="Router address; default: start a local stack.")
    p.add_argument("--prompts", help="JSONL file with a `prompt` field per line.")
    p.add_argument("--policies", default="edge,cloud,speculative")
    p.add_argument("--max-tokens", type=int, default=64)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tandem.shared.stack import LocalStack, StackSettings

    stack = None
    router = args.router
    if router is None:
        stack = LocalStack(StackSettings.on_free_ports())
        stack.start()
        router = stack.router_address
    try:
        return run_policies(router, load_prompts(args.prompts), args.policies.split(","),
                            args.max_tokens)
    finally:
        if stack:
            stack.stop()


@dataclass
class PolicyRun:
    policy: str
    seconds: float = 0.0
    output_tokens: int = 0
    cloud_passes: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    overhead_ms: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "policy": self.policy,
            "output_tokens": self.output_tokens,
            "seconds": round(self.seconds, 3),
            "tok_s": round(self.output_tokens / self.seconds, 2) if self.seconds else 0.0,
            "cloud_passes_per_token": round(self.cloud_passes / max(self.output_tokens, 1), 3),
        }
        if self.draft_tokens:
            out["acceptance_rate"] = round(self.accepted_tokens / self.draft_tokens, 3)
            out["draft_tokens"] = self.draft_tokens
        if self.overhead_ms:
            # Time the router itself spent (validation, state, policy, detokenization).
            out["router_overhead_ms_p50"] = round(float(np.percentile(self.overhead_ms, 50)), 3)
            out["router_overhead_ms_p99"] = round(float(np.percentile(self.overhead_ms, 99)), 3)
        return out


def run_policies(router: str, prompts: list[str], policies: list[str], max_tokens: int,
                 warmup: bool = True) -> dict[str, Any]:
    """Greedy requests, one at a time, for every (policy, prompt); returns the JSON report."""
    runs = {p: PolicyRun(p) for p in policies}
    with grpc.insecure_channel(router) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0)
        if warmup:  # first requests pay one-off costs (allocations, caches)
            for policy in policies:
                stub.Generate(router_pb2.GenerateRequest(prompt="Hi", policy=policy,
                                                         sampling=sampling), timeout=300)
        for prompt in prompts:
            for policy in policies:
                request = router_pb2.GenerateRequest(prompt=prompt, policy=policy,
                                                     sampling=sampling)
                started = time.perf_counter()
                reply = stub.Generate(request, timeout=600)
                run = runs[policy]
                run.seconds += time.perf_counter() - started
                run.output_tokens += reply.usage.edge_tokens + reply.usage.cloud_tokens
                run.cloud_passes += reply.usage.cloud_forward_passes
                run.draft_tokens += reply.usage.draft_tokens
                run.accepted_tokens += reply.usage.accepted_draft_tokens
                run.overhead_ms.append(reply.timings.overhead_ns / 1e6)
                run.texts.append(reply.text)
    report: dict[str, Any] = {"max_tokens": max_tokens, "prompts": len(prompts),
                              "policies": [r.summary() for r in runs.values()]}
    cloud_tok_s = runs["cloud"].summary()["tok_s"] if "cloud" in runs else 0.0
    for policy in ("speculative", "speculative-cascade"):  # lossless when greedy (and τ = 1)
        if "cloud" in runs and policy in runs:
            key = policy.replace("-", "_")
            report[f"{key}_identical_to_cloud"] = runs["cloud"].texts == runs[policy].texts
            if cloud_tok_s:
                report[f"{key}_speedup"] = round(runs[policy].summary()["tok_s"] / cloud_tok_s, 2)
    return report


def table(report: dict[str, Any]) -> str:
    lines = [f"{'policy':<19} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {'passes/tok':>10} {'accept':>7}"]
    for row in report["policies"]:
        lines.append(f"{row['policy']:<19} {row['output_tokens']:>7} {row['seconds']:>8.2f} "
                     f"{row['tok_s']:>8.2f} {row['cloud_passes_per_token']:>10.3f} "
                     f"{row.get('acceptance_rate', ''):>7}")
    return "\n".join(lines)
