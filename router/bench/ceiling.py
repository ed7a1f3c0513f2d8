"""`tandem bench ceiling`: what speculative decoding can gain with this edge/cloud pair,
whatever the router's draft-length controller does.

The cloud's greedy answers (its Generate, which gives HF's greedy tokens) are replayed
against the edge: from every position of every answer the edge drafts up to MAX_DRAFT
tokens through its Draft RPC (its real drafting path, reusing the cached prefix), and the
run of tokens that match the cloud's is recorded, with the edge's own time per drafted
token (the Draft reply's timings, so gRPC is not counted). Each fixed draft length k is
then costed round by round (the draft, the round trip, a verify pass over k + 1 tokens)
with the cloud's step time. The best fixed k, chosen in hindsight, is what a controller
should approach (adapting k per round and drafting during round trips can do a little
better); costs that are not measured here are flags.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import grpc

from tandem.router.bench.prompts import load_prompts
from tandem.router.policies.draft_length import MAX_DRAFT
from tandem.v1 import cloud_pb2_grpc, common_pb2, edge_pb2, edge_pb2_grpc

HELP = "The speed-up a draft-length controller could reach with this edge/cloud pair."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", help="JSONL with a `prompt` field (default: the bench's).")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rtt-ms", default="0,20")
    p.add_argument("--step-ms", type=float, default=21.0,
                   help="Cloud step as the router sees it (cloud-only ~47 tok/s here).")
    p.add_argument("--verify-slope", type=float, default=0.03,
                   help="Each verified token's cost as a share of a step (CPU engine).")
    p.add_argument("--cloud-prefill-ms", type=float, default=60.0)


def cloud_answers(cloud: cloud_pb2_grpc.CloudStub, prompts: list[list[int]],
                  max_tokens: int) -> list[list[int]]:
    greedy = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return [list(cloud.Generate(common_pb2.TierGenerateRequest(
        prompt_tokens=common_pb2.TokenIds(ids=ids), sampling=greedy), timeout=600).token_ids)
        for ids in prompts]


def accepted_runs(edge: edge_pb2_grpc.EdgeStub, prompts: list[list[int]],
                  answers: list[list[int]]) -> tuple[list[list[int]], float, float]:
    """Per answer and position, how many of the edge's drafts match the cloud; the edge's
    seconds per evaluated token, and its mean prompt-processing seconds."""
    greedy = common_pb2.SamplingParams(temperature=0.0)
    runs, steady_s, steady_tokens, prompt_s = [], 0.0, 0, 0.0
    for ids, answer in zip(prompts, answers):
        matched = []
        for p in range(len(answer)):
            draft = edge.Draft(edge_pb2.DraftRequest(
                session_id="ceiling", tokens=ids + answer[:p], num_tokens=MAX_DRAFT,
                sampling=greedy), timeout=600)
            seconds = draft.timings.total_ns / 1e9
            if p == 0:  # prompt processing, then drafting at the steady rate
                prompt_s += seconds
            else:
                steady_s, steady_tokens = steady_s + seconds, steady_tokens + draft.computed_tokens
            run = 0
            while run < len(draft.tokens) and p + run < len(answer) \
                    and draft.tokens[run] == answer[p + run]:
                run += 1
            matched.append(run)
        runs.append(matched)
    per_token = steady_s / max(steady_tokens, 1)
    # the first call also evaluated MAX_DRAFT - 1 drafts after the prompt
    return runs, per_token, prompt_s / len(prompts) - (MAX_DRAFT - 1) * per_token


def speedup(runs: list[list[int]], k: int, rtt: float, draft: float, costs: argparse.Namespace,
            edge_prompt: float) -> float:
    """Cloud-only time over speculative time (seconds), drafting k tokens a round."""
    spec = cloud = 0.0
    for matched in runs:
        n, p = len(matched), 0
        spec += edge_prompt + costs.cloud_prefill_ms / 1e3
        cloud += rtt + costs.cloud_prefill_ms / 1e3 + n * costs.step_ms / 1e3
        while p < n:
            room = min(k, n - p)
            spec += room * draft + rtt + costs.step_ms / 1e3 * (1 + costs.verify_slope * room)
            p += min(matched[p], room) + 1
    return cloud / spec


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tandem.shared.models import DEFAULT_MODEL, load_tokenizer, resolve_model
    from tandem.shared.process import ServiceProcess
    from tandem.shared.prompting import chat_token_ids

    tokenizer = load_tokenizer(resolve_model(DEFAULT_MODEL))
    prompts = [chat_token_ids(tokenizer, [{"role": "user", "content": t}])
               for t in load_prompts(args.prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        services = [ServiceProcess(name, ["--port", "0", "--metrics-port", "-1"], Path(tmp))
                    for name in ("cloud", "edge")]
        try:
            for service in services:
                service.wait_ready(600)
            cloud_address, edge_address = (s.address for s in services)
            with grpc.insecure_channel(cloud_address) as channel:
                answers = cloud_answers(cloud_pb2_grpc.CloudStub(channel), prompts,
                                        args.max_tokens)
            with grpc.insecure_channel(edge_address) as channel:
                runs, draft_s, edge_prompt_s = accepted_runs(edge_pb2_grpc.EdgeStub(channel),
                                                             prompts, answers)
        finally:
            for service in services:
                service.stop()
    report: dict[str, Any] = {
        "prompts": len(prompts), "positions": sum(map(len, runs)),
        "first_token_accepted": round(sum(r[0] > 0 for r in runs if r) / len(runs), 3),
        "draft_ms_per_token": round(draft_s * 1e3, 2), "step_ms": args.step_ms, "results": []}
    for rtt in (float(x) / 1e3 for x in args.rtt_ms.split(",")):
        def best(draft: float) -> tuple[int, float]:
            return max(((k, speedup(runs, k, rtt, draft, args, edge_prompt_s))
                        for k in range(1, MAX_DRAFT + 1)), key=lambda kv: kv[1])
        k, value = best(draft_s)
        report["results"].append({
            "rtt_ms": rtt * 1e3, "best_k": k, "speedup": round(value, 3),
            "speedup_draft_2x_faster": round(best(draft_s / 2)[1], 3),
            "speedup_draft_free": round(best(0.0)[1], 3)})
    return report


def table(report: dict[str, Any]) -> str:
    lines = [f"{report['prompts']} prompts, {report['positions']} positions; drafts "
             f"{report['draft_ms_per_token']} ms/token; cloud step {report['step_ms']} ms",
             f"{'rtt_ms':>6} {'best k':>6} {'ceiling':>7} {'2x draft':>8} {'free draft':>10}"]
    for r in report["results"]:
        lines.append(f"{r['rtt_ms']:>6g} {r['best_k']:>6} {r['speedup']:>7.3f} "
                     f"{r['speedup_draft_2x_faster']:>8.3f} {r['speedup_draft_free']:>10.3f}")
    return "\n".join(lines)
