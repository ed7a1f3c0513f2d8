"""`tandem bench policies`: tok/s of each policy through the router (JSON + table)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


# Other benchmarks register here: kind -> "module:add_parser" (called with the kinds
# subparsers; imported lazily so `tandem --help` stays fast).
BENCH_MODULES: dict[str, str] = {"cloud": "tandem.shared.cli.bench_cloud:add_parser",
                                 "edge": "tandem.shared.cli.bench_edge:add_parser",
                                 "sdk": "tandem.edge.sdk.bench:add_parser",
                                 "router": "tandem.router.latency_bench:add_parser"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="Benchmarks that print JSON of what they measured.")
    kinds = bench.add_subparsers(dest="bench", required=True)
    for path in BENCH_MODULES.values():
        module, _, attr = path.partition(":")
        getattr(__import__(module, fromlist=[attr]), attr)(kinds)
    p = kinds.add_parser("policies", help="Output tok/s per policy through the router.")
    p.add_argument("--router", help="Router address; default: start a local stack.")
    p.add_argument("--prompts", help="JSONL file with a `prompt` field per line.")
    p.add_argument("--policies", default="edge,cloud,speculative")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--json", action="store_true", help="Print only the JSON report on stdout.")
    p.set_defaults(run=run_policies_bench)
    s = kinds.add_parser("speculative", help="Speculative vs cloud-only at injected RTTs.")
    s.add_argument("--prompts", help="JSONL file with a `prompt` field per line.")
    s.add_argument("--rtt-ms", default="0,20", help="Comma-separated router→cloud RTTs.")
    s.add_argument("--max-tokens", type=int, default=64)
    s.add_argument("--json", action="store_true", help="Print only the JSON report on stdout.")
    s.set_defaults(run=run_speculative_bench)


def _prompts(path: str | None) -> list[str]:
    from tandem.router.bench import DEFAULT_PROMPTS

    if not path:
        return DEFAULT_PROMPTS
    with open(path) as fh:
        return [json.loads(line)["prompt"] for line in fh if line.strip()]


def run_speculative_bench(args: argparse.Namespace) -> int:
    """Cloud and edge start once; a fresh router per RTT (its draft-length controller
    learns that link from scratch)."""
    from tandem.router.bench import format_speculative, speculative_row
    from tandem.shared.process import ServiceProcess

    prompts = _prompts(args.prompts)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tiers = [ServiceProcess(name, ["--port", "0", "--metrics-port", "-1"], workdir)
                 for name in ("cloud", "edge")]
        try:
            for service in tiers:
                service.wait_ready(600)
            for rtt in (float(x) for x in args.rtt_ms.split(",")):
                router = ServiceProcess("router", [
                    "--port", "0", "--metrics-port", "-1", "--cloud-address", tiers[0].address,
                    "--edge-address", tiers[1].address, "--inject-cloud-rtt-ms", str(rtt)],
                    workdir)
                try:
                    router.wait_ready(600)
                    results.append(speculative_row(router.address, prompts, args.max_tokens, rtt))
                finally:
                    router.stop()
        finally:
            for service in tiers:
                service.stop()
    print(format_speculative(results), file=sys.stderr)
    print(json.dumps({"max_tokens": args.max_tokens, "prompts": len(prompts),
                      "results": results}, indent=None if args.json else 2))
    return 0


def run_policies_bench(args: argparse.Namespace) -> int:
    from tandem.router.bench import format_table, run_policies
    from tandem.shared.stack import LocalStack, StackSettings

    prompts = _prompts(args.prompts)
    stack = None
    router = args.router
    if router is None:
        stack = LocalStack(StackSettings.on_free_ports())
        stack.start()
        router = stack.router_address
    try:
        report = run_policies(router, prompts, args.policies.split(","), args.max_tokens)
    finally:
        if stack:
            stack.stop()
    print(format_table(report), file=sys.stderr)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0
