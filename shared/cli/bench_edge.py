"""`tandem bench edge`: every edge format (llama.cpp and the torch runtime's compressed
variants) on the same evaluation text; JSON on stdout, a table on stderr."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(kinds: argparse._SubParsersAction) -> None:
    from tandem.shared.models import DEFAULT_MODEL

    p = kinds.add_parser("edge", help="Perplexity, bytes, RSS, storage reads and tok/s per edge format.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Packaged alias, .gguf path or HF folder.")
    p.add_argument("--artifacts", default=None,
                   help="Folder for the built artifacts (default: the Tandem cache); reused.")
    p.add_argument("--rebuild", action="store_true", help="Rebuild the artifacts first.")
    p.add_argument("--eval-tokens", type=int, default=256, help="Evaluation tokens (256 per window).")
    p.add_argument("--decode-tokens", type=int, default=48,
                   help="Tokens decoded for tok/s (flash: from an empty window after the prompt).")
    p.add_argument("--threads", type=int, default=1,
                   help="Compute threads for every config (1 default: steadier on a shared box).")
    p.add_argument("--repeats", type=int, default=7,
                   help="llama.cpp plain/through-Tandem pairs (median of per-pair ratios).")
    p.add_argument("--only", default="", help="Comma-separated config names to run.")
    p.add_argument("--plot", default=None, help="Also draw the flash frontier to this PNG.")
    p.add_argument("--json", action="store_true", help="Print only the JSON report on stdout.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tandem.edge.compress.bench import BenchSettings, format_table, plot_frontier, run_bench
    from tandem.shared.models import ModelNotFound, cache_root, resolve_model

    try:
        source = resolve_model(args.model)
    except ModelNotFound as exc:
        print(f"tandem bench edge: {exc}", file=sys.stderr)
        return 2
    out = Path(args.artifacts) if args.artifacts else cache_root() / "edge-bench" / (
        f"{source.path.stem}-{source.fingerprint()}")
    settings = BenchSettings(eval_tokens=args.eval_tokens, decode_tokens=args.decode_tokens,
                             threads=args.threads, repeats=args.repeats,
                             only=[n for n in args.only.split(",") if n])
    report = run_bench(source, out, settings, rebuild=args.rebuild)
    print(format_table(report), file=sys.stderr)
    if args.plot:
        plot_frontier(report, args.plot)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0
