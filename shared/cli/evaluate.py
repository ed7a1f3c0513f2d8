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
    c.add_argument("--edge-quant", default="Q3_K_M",
                   help="Re-quantize the default GGUF to this for the started edge "
                        "(Q8_0, Q4_0, Q4_K_M, Q3_K_M, Q2_K) or 'none'.")
    c.add_argument("--max-tokens", type=int, default=48)
    c.set_defaults(run=run_collect)
    t = kinds.add_parser("train-scorer", help="Fit the learned scorer and prompt router.")
    t.add_argument("--labels", required=True, help="JSONL written by `tandem eval collect`.")
    t.add_argument("--out-dir", default=None, help="Where heads go (default: shipped data).")
    t.add_argument("--metric", default="rouge_l", choices=["rouge_l", "f1"])
    t.add_argument("--bar", type=float, default=0.5,
                   help="An edge answer is acceptable when its agreement reaches this.")
    t.add_argument("--budget", type=float, default=0.3,
                   help="Calibrate the threshold to escalate at most this share of requests.")
    t.add_argument("--quality-target", type=float, default=None,
                   help="Instead: the fewest escalations whose mean quality reaches this.")
    t.set_defaults(run=run_train)
    e = kinds.add_parser("cascade", help="Cost/quality curve, APGR and cost reduction.")
    e.add_argument("--prompts", required=True, help="JSONL prompts (need not be seen before).")
    e.add_argument("--labels", help="Labels for those prompts (collected when missing).")
    e.add_argument("--edge-quant", default="Q3_K_M")
    e.add_argument("--max-tokens", type=int, default=32)
    e.add_argument("--quality", default="rouge_l", choices=["rouge_l", "f1"])
    e.add_argument("--bar", type=float, default=0.5,
                   help="An edge answer is acceptable (quality 1) when its agreement reaches "
                        "this; 0 = quality is the agreement itself.")
    e.add_argument("--scorer", default="mean_prob",
                   choices=["mean_prob", "min_prob", "entropy", "learned", "route"],
                   help="Whose APGR and cost reduction head the report (all are listed).")
    e.add_argument("--plot", default="cascade_eval.png", help="PNG to write.")
    e.add_argument("--json", action="store_true", help="Print only the JSON report.")
    e.set_defaults(run=run_cascade)


def edge_model_for(quant: str) -> str:
    from tandem.shared.gguf_quant import requantized
    from tandem.shared.models import DEFAULT_MODEL, resolve_model

    if quant == "none":
        return DEFAULT_MODEL
    return str(requantized(resolve_model(DEFAULT_MODEL), quant))


def run_collect(args: argparse.Namespace) -> int:
    rows, out = collect_labels(args)
    agree = sum(r["rouge_l"] for r in rows) / max(len(rows), 1)
    print(json.dumps({"rows": len(rows), "out": str(out), "mean_rouge_l": round(agree, 4)}))
    return 0


def collect_labels(args: argparse.Namespace) -> tuple[list[dict], Path]:
    """Label the edge's answers against the cloud's (starting both unless given)."""
    from tandem.router.eval.collect import collect, edge_and_cloud, read_jsonl

    prompts = read_jsonl(args.prompts)
    out = Path(args.out)
    if args.edge and args.cloud:
        rows = collect(prompts, args.edge, args.cloud, out, args.max_tokens)
    else:
        with tempfile.TemporaryDirectory() as tmp, \
                edge_and_cloud(edge_model_for(args.edge_quant), Path(tmp)) as (edge, cloud):
            rows = collect(prompts, edge, cloud, out, args.max_tokens)
    print(f"{len(rows)} labelled answers in {out}", file=sys.stderr)
    return rows, out


def run_train(args: argparse.Namespace) -> int:
    from tandem.router.embeddings import SentenceEncoder
    from tandem.router.eval.collect import read_jsonl
    from tandem.router.eval.train import train
    from tandem.router.scorers import DATA

    out_dir = Path(args.out_dir) if args.out_dir else DATA
    report = train(read_jsonl(args.labels), SentenceEncoder(), out_dir, args.metric, args.bar,
                   args.budget, args.quality_target)
    print(json.dumps(report, indent=2))
    return 0


def run_cascade(args: argparse.Namespace) -> int:
    from tandem.router.eval.report import cascade_report

    labels = Path(args.labels) if args.labels else Path(args.prompts).with_suffix(".labels.jsonl")
    if not labels.exists() or args.labels is None:
        collect_args = argparse.Namespace(prompts=args.prompts, out=str(labels), edge=None,
                                          cloud=None, edge_quant=args.edge_quant,
                                          max_tokens=args.max_tokens)
        collect_labels(collect_args)  # stdout carries only the report
    report = cascade_report(labels, args.quality, args.bar, args.edge_quant, args.plot,
                            args.scorer)
    if not args.json:
        print(format_cascade(report), file=sys.stderr)
    def no_curve(result: dict) -> dict:
        return {k: v for k, v in result.items() if k != "curve"}

    print(json.dumps(report | {"scorers": {n: no_curve(r) for n, r in report["scorers"].items()},
                               "oracle": no_curve(report["oracle"])}))
    return 0


def format_cascade(report: dict) -> str:
    lines = [f"{report['prompts']} prompts, edge-only quality {report['edge_only_quality']:.3f} "
             f"(share of edge answers with {report['quality']} >= {report['bar']} vs cloud; "
             f"mean {report['quality']} {report['edge_only_agreement']:.3f})",
             f"{'router':<12} {'APGR':>6} {'saved@95%':>10}"]
    rows = list(report["scorers"].items()) + [("random", report["random"]),
                                              ("oracle", report["oracle"])]
    for name, r in rows:
        lines.append(f"{name:<12} {r['apgr']:>6.3f} {r['cost_reduction_at_95']:>10.3f}")
    return "\n".join(lines)
