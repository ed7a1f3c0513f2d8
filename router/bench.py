"""Benchmark of the policies through a running router: output tok/s per policy on the
same prompts, side by side in one run, plus speculative acceptance and identity."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc

# Default prompts (a mix of short factual, instruction and writing requests).
DEFAULT_PROMPTS = [
    "Explain what a CPU does in one sentence.",
    "Write a haiku about the sea.",
    "Give me three tips for staying healthy.",
    "What is photosynthesis?",
    "Write a short story opening about a lighthouse keeper.",
]


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
    if "cloud" in runs and "speculative" in runs:
        report["speculative_identical_to_cloud"] = runs["cloud"].texts == runs["speculative"].texts
        cloud_tok_s = runs["cloud"].summary()["tok_s"]
        if cloud_tok_s:
            report["speculative_speedup"] = round(runs["speculative"].summary()["tok_s"] / cloud_tok_s, 2)
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'policy':<12} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {'passes/tok':>10} {'accept':>7}"]
    for row in report["policies"]:
        lines.append(f"{row['policy']:<12} {row['output_tokens']:>7} {row['seconds']:>8.2f} "
                     f"{row['tok_s']:>8.2f} {row['cloud_passes_per_token']:>10.3f} "
                     f"{row.get('acceptance_rate', ''):>7}")
    return "\n".join(lines)


def speculative_row(router: str, prompts: list[str], max_tokens: int, rtt_ms: float
                    ) -> dict[str, Any]:
    """Cloud-only vs speculative through one router (whose cloud link has ``rtt_ms``)."""
    report = run_policies(router, prompts, ["cloud", "speculative"], max_tokens)
    rows = {r["policy"]: r for r in report["policies"]}
    spec, cloud = rows["speculative"], rows["cloud"]
    with grpc.insecure_channel(router) as channel:  # the draft length the router settled on
        reply = router_pb2_grpc.RouterStub(channel).Generate(router_pb2.GenerateRequest(
            prompt=prompts[0], policy="speculative",
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0)),
            timeout=600)
    rounds = spec["cloud_passes_per_token"] * spec["output_tokens"]
    accepted = spec.get("acceptance_rate", 0.0) * spec.get("draft_tokens", 0)
    return {
        "rtt_ms": rtt_ms,
        "cloud_only_tok_s": cloud["tok_s"],
        "speculative_tok_s": spec["tok_s"],
        "speedup": round(spec["tok_s"] / cloud["tok_s"], 3) if cloud["tok_s"] else None,
        "acceptance_rate": spec.get("acceptance_rate", 0.0),
        "mean_accepted_len": round(accepted / rounds, 3) if rounds else 0.0,
        "cloud_passes_per_token": spec["cloud_passes_per_token"],
        "draft_len": reply.decision.draft_length,
        "identical": report["speculative_identical_to_cloud"],
    }


def format_speculative(results: list[dict[str, Any]]) -> str:
    lines = [f"{'rtt_ms':>6} {'cloud tok/s':>11} {'spec tok/s':>10} {'speedup':>7} "
             f"{'accept':>6} {'acc.len':>7} {'passes/tok':>10} {'k':>3} identical"]
    for r in results:
        lines.append(f"{r['rtt_ms']:>6g} {r['cloud_only_tok_s']:>11.2f} "
                     f"{r['speculative_tok_s']:>10.2f} {r['speedup']:>7.2f} "
                     f"{r['acceptance_rate']:>6.3f} {r['mean_accepted_len']:>7.2f} "
                     f"{r['cloud_passes_per_token']:>10.3f} {r['draft_len']:>3} {r['identical']}")
    return "\n".join(lines)
