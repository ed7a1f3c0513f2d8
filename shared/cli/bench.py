"""`tandem bench policies`: tok/s of each policy through the router (JSON + table)."""

from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace


# Other benchmarks register here: kind -> "module:add_parser" (called with the kinds
# subparsers; imported lazily so `tandem --help` stays fast).
BENCH_MODULES: dict[str, str] = {}


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


def run_policies_bench(args: argparse.Namespace) -> int:
    from tandem.router.bench import DEFAULT_PROMPTS, format_table, run_policies
    from tandem.shared.cli.up import LocalStack
    from tandem.shared.process import free_port

    prompts = DEFAULT_PROMPTS
    if args.prompts:
        with open(args.prompts) as fh:
            prompts = [json.loads(line)["prompt"] for line in fh if line.strip()]
    stack = None
    router = args.router
    if router is None:
        stack = LocalStack(SimpleNamespace(
            config=None, host="127.0.0.1", router_port=free_port(), cloud_port=free_port(),
            edge_port=free_port(), redis_port=free_port(), no_redis=False))
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
