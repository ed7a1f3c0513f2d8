"""`tandem bench speculative`: speculative decoding against cloud-only through one router,
at injected router→cloud round-trip times, with `speculative-cascade` beside them (at the
router's default leniency, 1: with greedy decoding it must give the cloud's output at the
speed of `speculative`). The cloud and edge start once; a fresh router per RTT (its
draft-length controller learns that link from scratch)."""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path
from typing import Any

import grpc

from tandem.router.bench.policies import run_policies
from tandem.router.bench.prompts import load_prompts
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc

HELP = "Speculative vs cloud-only at injected RTTs."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", help="JSONL file with a `prompt` field per line.")
    p.add_argument("--rtt-ms", default="0,20", help="Comma-separated router→cloud RTTs.")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--edge-args", default="",
                   help="Extra flags for the edge service, e.g. '--backend torch --artifacts "
                        "DIR' (a distilled edge against the undistilled one).")
    p.add_argument("--cloud-args", default="",
                   help="Extra flags for the cloud service, e.g. '--engine vllm'.")
    p.add_argument("--router-args", default="",
                   help="Extra flags for each router, e.g. '--no-adaptive-draft "
                        "--draft-tokens 6' (acceptance at a fixed draft length).")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tandem.shared.process import ServiceProcess

    prompts = load_prompts(args.prompts)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        extra = {"cloud": shlex.split(args.cloud_args), "edge": shlex.split(args.edge_args)}
        tiers = [ServiceProcess(name, ["--port", "0", "--metrics-port", "-1", *extra[name]],
                                workdir) for name in ("cloud", "edge")]
        try:
            for service in tiers:
                service.wait_ready(600)
            for rtt in (float(x) for x in args.rtt_ms.split(",")):
                router = ServiceProcess("router", [
                    "--port", "0", "--metrics-port", "-1", "--cloud-address", tiers[0].address,
                    "--edge-address", tiers[1].address, "--inject-cloud-rtt-ms", str(rtt),
                    *shlex.split(args.router_args)], workdir)
                try:
                    router.wait_ready(600)
                    results.append(speculative_row(router.address, prompts, args.max_tokens, rtt))
                finally:
                    router.stop()
        finally:
            for service in tiers:
                service.stop()
    return {"max_tokens": args.max_tokens, "prompts": len(prompts),
            "cloud_args": args.cloud_args, "edge_args": args.edge_args,
            "router_args": args.router_args, "results": results}


def speculative_row(router: str, prompts: list[str], max_tokens: int, rtt_ms: float
                    ) -> dict[str, Any]:
    """Cloud-only vs speculative (and speculative-cascade) through one router, whose
    cloud link has ``rtt_ms``; each prompt goes through every policy in turn."""
    report = run_policies(router, prompts, ["cloud", "speculative", "speculative-cascade"],
                          max_tokens)
    rows = {r["policy"]: r for r in report["policies"]}
    spec, cloud, cascade = rows["speculative"], rows["cloud"], rows["speculative-cascade"]
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
        "speculative_cascade_tok_s": cascade["tok_s"],
        "speculative_cascade_vs_speculative": (round(cascade["tok_s"] / spec["tok_s"], 3)
                                               if spec["tok_s"] else None),
        "speculative_cascade_identical": report["speculative_cascade_identical_to_cloud"],
    }


def table(report: dict[str, Any]) -> str:
    lines = [f"{'rtt_ms':>6} {'cloud tok/s':>11} {'spec tok/s':>10} {'speedup':>7} "
             f"{'accept':>6} {'acc.len':>7} {'passes/tok':>10} {'k':>3} identical "
             f"{'spec-casc tok/s':>15} {'vs spec':>7} identical"]
    for r in report["results"]:
        lines.append(f"{r['rtt_ms']:>6g} {r['cloud_only_tok_s']:>11.2f} "
                     f"{r['speculative_tok_s']:>10.2f} {r['speedup']:>7.2f} "
                     f"{r['acceptance_rate']:>6.3f} {r['mean_accepted_len']:>7.2f} "
                     f"{r['cloud_passes_per_token']:>10.3f} {r['draft_len']:>3} "
                     f"{str(r['identical']):>9} {r['speculative_cascade_tok_s']:>15.2f} "
                     f"{r['speculative_cascade_vs_speculative']:>7.2f} "
                     f"{r['speculative_cascade_identical']}")
    return "\n".join(lines)
