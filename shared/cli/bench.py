"""`tandem bench NAME`: every benchmark lives beside the code it measures and has the same
four parts (HELP, add_arguments(parser), run(args) -> report, table(report)); this
command registers each in one line and prints them all the same way: the JSON report on
stdout, the readable table on stderr."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from functools import partial
from types import ModuleType

# name -> module (imported when the parser is built: their top-level imports stay light)
BENCHMARKS = {
    "cloud": "tandem.cloud.bench",
    "edge": "tandem.edge.compress.bench",
    "sdk": "tandem.edge.sdk.bench",
    "policies": "tandem.router.bench.policies",
    "speculative": "tandem.router.bench.speculative",
    "router": "tandem.router.bench.latency",
    "ceiling": "tandem.router.bench.ceiling",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="Benchmarks that print JSON of what they measured.")
    kinds = bench.add_subparsers(dest="bench", required=True)
    for name, path in BENCHMARKS.items():
        module = importlib.import_module(path)
        p = kinds.add_parser(name, help=module.HELP)
        module.add_arguments(p)
        p.add_argument("--json", action="store_true",
                       help="Print the JSON report on one line (the table still goes to stderr).")
        p.set_defaults(run=partial(run_benchmark, module))


def run_benchmark(module: ModuleType, args: argparse.Namespace) -> int:
    from tandem.shared.errors import Unavailable
    from tandem.shared.models import ModelNotFound

    try:
        report = module.run(args)
    except (ModelNotFound, Unavailable) as exc:  # a missing model, or a peer engine
        print(f"tandem bench {args.bench}: {exc}", file=sys.stderr)
        return 2
    print(module.table(report), file=sys.stderr)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0
