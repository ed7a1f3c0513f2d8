"""`tandem loadtest`: locust, headless, against a running stack (or one it starts with
--up); prints the summary JSON (vLLM serving metrics plus tier share, escalation and
speculative acceptance) and a short table on stderr. With --sweep it runs one load test
per concurrency level and draws throughput-latency curves."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

DEFAULT_ADDRESSES = {"router": "127.0.0.1:50051", "cloud": "127.0.0.1:50052",
                     "openai": "127.0.0.1:8000"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loadtest", help="Load-test the router or cloud with locust (JSON report).")
    p.add_argument("--target", choices=("router", "cloud", "openai"), default="router",
                   help="openai: the router's OpenAI-compatible HTTP API (streamed chat "
                        "completions), the same workload as the router's gRPC target.")
    p.add_argument("--address", help="host:port of the target (gRPC, or HTTP for openai; "
                                     "default: the tandem up port).")
    p.add_argument("--up", action="store_true", help="Start a local stack on free ports first.")
    p.add_argument("--stack-config", help="--up: TOML file with [cloud], [edge] and [router] "
                                          "sections (as for tandem up --config).")
    p.add_argument("--cloud-replicas", type=int, default=1,
                   help="--up: cloud replicas behind the router (as for tandem up).")
    p.add_argument("--edge-replicas", type=int, default=1, help="--up: edge replicas.")
    p.add_argument("--users", type=int, default=4, help="Concurrent users (locust -u).")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--requests", type=int, help="Requests in all, then stop (default 20).")
    stop.add_argument("--duration", type=float, help="Run for this many seconds instead.")
    p.add_argument("--policy", default="", help="Router policy, or weights: edge=1,cloud=1.")
    p.add_argument("--prompts", default="mixed", help="Built-in prompt set or JSONL file.")
    p.add_argument("--mix", default="", help="Prompt tag weights, e.g. easy=3,hard=1.")
    p.add_argument("--chats", default="", help="Chat set (built-in 'chats' or JSONL) for "
                                                 "multi-turn session users.")
    p.add_argument("--chat-users", type=int, default=0,
                   help="How many of the users run multi-turn chats in sessions (default 0).")
    p.add_argument("--chat-policy", default="", help="Policy weights of chat users.")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--request-rate", type=float, default=None,
                   help="Poisson arrivals (req/s in all); default: constant concurrency.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0, help="Per-request deadline (s).")
    p.add_argument("--goodput", nargs="+", default=[], metavar="METRIC:MS",
                   help="SLOs for goodput, e.g. ttft:2000 tpot:200 e2el:10000.")
    p.add_argument("--metrics", action="append", default=[], metavar="NAME=HOST:PORT",
                   help="A service's Prometheus endpoint whose counter deltas join the report.")
    p.add_argument("--output-dir", help="Where locust's CSV/HTML and the records go.")
    p.add_argument("--sweep", help="Concurrency levels, e.g. 1,4,16,32: one run each "
                                   "(--users and --requests are then set per level).")
    p.add_argument("--requests-per-user", type=int, default=4,
                   help="Sweep: requests per level = this x users (at least 8).")
    p.add_argument("--plot", help="Sweep: write throughput-latency curves to this PNG.")
    p.add_argument("--json", action="store_true", help="Print compact JSON on stdout.")
    p.set_defaults(run=run)


def _load_test(args: argparse.Namespace, address: str) -> Any:
    from tandem.loadtests.report import parse_slos
    from tandem.loadtests.run import LoadTest

    return LoadTest(
        target=args.target, address=address, users=args.users,
        requests=None if args.duration else (args.requests or 20), duration_s=args.duration,
        policy=args.policy, prompts=args.prompts, mix=args.mix,
        chats=args.chats or ("chats" if args.chat_users else ""), chat_users=args.chat_users,
        chat_policy=args.chat_policy, max_tokens=args.max_tokens, temperature=args.temperature,
        request_rate=args.request_rate, seed=args.seed, timeout_s=args.timeout,
        slos=parse_slos(args.goodput), output_dir=args.output_dir)


def _name_and_address(item: str) -> tuple[str, str]:
    name, _, address = item.partition("=")
    if not name or ":" not in address:
        raise ValueError(f"--metrics {item!r}: need NAME=HOST:PORT, e.g. router=127.0.0.1:9100")
    return name, address


def run(args: argparse.Namespace) -> int:
    from tandem.loadtests.run import run_load_test, stack_endpoints, start_stack
    from tandem.loadtests.report import format_table

    try:
        metrics = dict(_name_and_address(item) for item in args.metrics)
        test = _load_test(args, args.address or DEFAULT_ADDRESSES[args.target])
        levels = [int(x) for x in args.sweep.split(",")] if args.sweep else []
        if args.plot and not levels:
            raise ValueError("--plot needs --sweep")
    except ValueError as exc:
        print(f"tandem loadtest: {exc}", file=sys.stderr)
        return 2
    stack, pids = None, None
    # SIGTERM unwinds like Ctrl-C, so the stack and locust started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.up:
            stack = start_stack(args.stack_config, args.cloud_replicas, args.edge_replicas)
            addresses, metrics, pids = stack_endpoints(stack)
            test.address = args.address or addresses[args.target]
        if levels:
            from tandem.loadtests.sweep import format_sweep, plot_sweep, run_sweep

            report: dict[str, Any] = run_sweep(test, levels, args.requests_per_user, metrics, pids)
            print(format_sweep(report), file=sys.stderr)
            if args.plot:
                plot_sweep(report, args.plot)
        else:
            report = run_load_test(test, metrics, pids)
            print(format_table(report), file=sys.stderr)
    finally:
        if stack is not None:
            stack.stop()
    print(json.dumps(report, indent=None if args.json else 2))
    unexpected = report["failed"] if "failed" in report else sum(
        level["failed"] for level in report["levels"])
    return 1 if unexpected else 0
