"""`tandem chaos`: the reliability scenarios (tandem.loadtests.chaos), longer than the CI
battery, against a running stack or one it starts (--up: Redis with AOF, tiers behind
fault proxies and an internal token, a router with API keys). Prints one JSON report on
stdout (one line per scenario on stderr as they finish); with --output-dir, writes it
there with the soak's figures as a PNG. Exit status 1 when a promise failed."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

SCENARIO_HELP = ("engines, isolation, fuzz, storm, overload, noisy_neighbour, redis, faults, drain, "
                 "soak (redis, faults and drain need --up)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chaos", help="Reliability scenarios under faults (JSON report).")
    p.add_argument("--up", action="store_true",
                   help="Start a stack for the run (needed by redis, faults and drain).")
    p.add_argument("--router", default="127.0.0.1:50051", help="Without --up: the router.")
    p.add_argument("--cloud", default="127.0.0.1:50052", help="Without --up: the cloud.")
    p.add_argument("--edge", default="127.0.0.1:50053", help="Without --up: the edge.")
    p.add_argument("--metrics", action="append", default=[], metavar="SERVICE=PORT",
                   help="Without --up: a service's Prometheus port (router, cloud, edge).")
    p.add_argument("--api-key", action="append", default=[], metavar="TENANT=KEY",
                   help="Without --up: a key per tenant the scenarios use (alice, bob, "
                        "mallory, fuzz, soak, load); none: the router runs open.")
    p.add_argument("--internal-token", help="Without --up: the tiers' internal token.")
    p.add_argument("--redis-url", help="Without --up: the router's Redis (state checks).")
    p.add_argument("--scenarios", default="", help=f"Comma-separated subset: {SCENARIO_HELP}.")
    p.add_argument("--soak", type=float, default=300.0, metavar="SECONDS",
                   help="Soak length (default 300; the one-hour soak: 3600).")
    p.add_argument("--ci", action="store_true", help="The CI battery's sizes (shorter).")
    p.add_argument("--output-dir", help="Write report.json (and soak.png) here.")
    p.set_defaults(run=run)


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name or not value:
            raise ValueError(f"{flag} {item!r}: need NAME=VALUE")
        out[name] = value
    return out


def _target(args: argparse.Namespace) -> Any:
    from tandem.loadtests.chaos.stack import Target

    metrics = {name: int(port) for name, port in _pairs(args.metrics, "--metrics").items()}
    return Target(router=args.router, cloud=args.cloud, edge=args.edge, metrics=metrics,
                  keys=_pairs(args.api_key, "--api-key"), internal_token=args.internal_token,
                  redis_url=args.redis_url)


def run(args: argparse.Namespace) -> int:
    from tandem.loadtests.chaos.run import SCENARIOS, Plan, run_scenarios
    from tandem.loadtests.chaos.stack import ChaosStack

    names = tuple(n.strip() for n in args.scenarios.split(",") if n.strip()) or SCENARIOS
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        print(f"tandem chaos: unknown scenarios {sorted(unknown)}; known: {SCENARIO_HELP}",
              file=sys.stderr)
        return 2
    plan = Plan.ci() if args.ci else Plan.long(args.soak)
    plan.soak.duration_s = args.soak
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stops the stack on the way out
    stack = ChaosStack() if args.up else None
    try:
        target = stack.start() if stack else _target(args)
        report = run_scenarios(target, plan, names,
                               lambda r: print(json.dumps(r.to_json(), default=str),
                                               file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"tandem chaos: {exc}", file=sys.stderr)
        return 2
    finally:
        if stack:
            stack.stop()
    _write(report, args.output_dir)
    print(json.dumps(report, default=str))
    return 0 if report["passed"] else 1


def _write(report: dict[str, Any], folder: str | None) -> None:
    if not folder:
        return
    from tandem.loadtests.chaos.soak import plot

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    for scenario in report["scenarios"]:
        if scenario["scenario"] == "soak" and scenario["measured"].get("samples"):
            plot(scenario, str(out / "soak.png"))
