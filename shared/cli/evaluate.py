"""`tandem eval ...`: collect labelled answers, train the learned scorers, evaluate the
cascade's cost/quality curve."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="Routing cost/quality evaluation.")
    kinds = ev.add_subparsers(dest="eval", required=True)
    c = kinds.add_parser("collect", help="Label edge answers against cloud answers.")
    c.add_argument("--prompts", required=True, help="JSONL with a `prompt` field per line.")
    c.add_argument("--out", required=True, help="JSONL to write (resumed if it exists).")
    c.add_argument("--edge", help="Edge address; default: start one (see --edge-quant).")
    c.add_argument("--cloud", help="Cloud address; default: start one.")
    c.add_argument("--edge-quant", default="Q2_K",
                   help="Re-quantize the default GGUF to this for the started edge "
                        "(Q8_0, Q4_0, Q4_K_M, Q3_K_M, Q2_K) or 'none'.")
    c.add_argument("--max-tokens", type=int, default=48)
    c.set_defaults(run=run_collect)


def edge_model_for(quant: str) -> str:
    from tandem.router.eval.edge_models import requantized
    from tandem.shared.models import DEFAULT_MODEL, resolve_model

    if quant == "none":
        return DEFAULT_MODEL
    return str(requantized(resolve_model(DEFAULT_MODEL), quant))


def run_collect(args: argparse.Namespace) -> int:
    from tandem.router.eval.collect import collect, edge_and_cloud, read_jsonl

    prompts = read_jsonl(args.prompts)
    out = Path(args.out)
    if args.edge and args.cloud:
        rows = collect(prompts, args.edge, args.cloud, out, args.max_tokens)
    else:
        with tempfile.TemporaryDirectory() as tmp, \
                edge_and_cloud(edge_model_for(args.edge_quant), Path(tmp)) as (edge, cloud):
            rows = collect(prompts, edge, cloud, out, args.max_tokens)
    agree = sum(r["rouge_l"] for r in rows) / max(len(rows), 1)
    print(json.dumps({"rows": len(rows), "out": str(out), "mean_rouge_l": round(agree, 4)}))
    print(f"{len(rows)} labelled answers in {out}", file=sys.stderr)
    return 0
