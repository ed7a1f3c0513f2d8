"""`tandem eval ...`: collect labelled answers, train the learned scorers, evaluate the
cascade's cost/quality curve."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tandem.shared.argtypes import shares, unit_interval

# The cascade's scorers (router/scorers.py's registry; kept here so that `--help` does not
# import the models).
SCORER_NAMES = ["mean_prob", "min_prob", "entropy", "learned", "cloud_mean_prob",
                "cloud_min_prob", "cloud_top1_share", "cloud_combined"]


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
    t.add_argument("--scorer", default="learned", choices=SCORER_NAMES,
                   help="Whose threshold to calibrate (a cloud_* scorer has a cloud judge "
                        "the labelled answers first, written into the labels).")
    t.set_defaults(run=run_train)
    e = kinds.add_parser("cascade", help="Cost/quality curve, APGR and cost reduction.")
    e.add_argument("--prompts", required=True, help="JSONL prompts (need not be seen before).")
    e.add_argument("--labels", help="Labels for those prompts (collected when missing).")
    e.add_argument("--edge-quant", default="Q3_K_M")
    e.add_argument("--max-tokens", type=int, default=32)
    e.add_argument("--quality", default="rouge_l", choices=["rouge_l", "f1", "correct"],
                   help="Agreement with the cloud's answer, or (checkable-answer sets, "
                        "scripts/make_checkable_prompts.py) whether the answer is right.")
    e.add_argument("--prefill-token-cost", type=unit_interval, default=None,
                   help="Forward-pass cost axis: what one prefill token costs in batch-1 "
                        "decode passes (default: measured on this machine kind, 0.035).")
    e.add_argument("--bar", type=float, default=0.5,
                   help="An edge answer is acceptable (quality 1) when its agreement reaches "
                        "this; 0 = quality is the agreement itself.")
    e.add_argument("--scorer", default="mean_prob",
                   choices=[*SCORER_NAMES, "route", "cloud_top5_share"],
                   help="Whose APGR and cost reduction head the report (all are listed).")
    e.add_argument("--taus", default="", type=shares,
                   help="Comma-separated speculative-cascade leniencies to evaluate (e.g. "
                        "1,0.5,0.2,0.05; each starts a router over one edge and cloud).")
    e.add_argument("--pass-budget", type=unit_interval, default=None,
                   help="With --taus: calibrate τ to this share of cloud-only serving's cloud "
                        "forward passes (the strictest measured τ within it).")
    e.add_argument("--no-judge", action="store_true",
                   help="Skip the cloud-judged scorers (they start a cloud when the labels "
                        "lack its judgements, and write them into the labels).")
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
    if args.scorer.startswith("cloud_"):
        judge_labels(Path(args.labels))
    report = train(read_jsonl(args.labels), SentenceEncoder(), out_dir, args.metric, args.bar,
                   args.budget, args.quality_target, args.scorer)
    print(json.dumps(report, indent=2))
    return 0


def run_cascade(args: argparse.Namespace) -> int:
    from tandem.router.eval.report import cascade_report

    if args.pass_budget is not None and not args.taus:
        raise SystemExit("--pass-budget calibrates τ on the curve --taus measures: give both")
    labels = Path(args.labels) if args.labels else Path(args.prompts).with_suffix(".labels.jsonl")
    if not labels.exists() or args.labels is None:
        collect_args = argparse.Namespace(prompts=args.prompts, out=str(labels), edge=None,
                                          cloud=None, edge_quant=args.edge_quant,
                                          max_tokens=args.max_tokens)
        collect_labels(collect_args)  # stdout carries only the report
    if not args.no_judge:
        judge_labels(labels)
    from tandem.router.eval.report import PREFILL_TOKEN_COST

    cost = PREFILL_TOKEN_COST if args.prefill_token_cost is None else args.prefill_token_cost
    report = cascade_report(labels, args.quality, args.bar, args.edge_quant, args.plot,
                            args.scorer, cost)
    if args.taus:
        from tandem.router.eval.collect import read_jsonl
        from tandem.router.eval.deferral import deferral_curve

        from tandem.router.eval.train import leniency_for_budget

        report["speculative_cascade"] = deferral_curve(
            read_jsonl(labels), [float(t) for t in args.taus.split(",")],
            edge_model_for(args.edge_quant), args.max_tokens, args.quality, args.bar)
        if args.pass_budget is not None:
            report["calibrated_leniency"] = leniency_for_budget(report["speculative_cascade"],
                                                                args.pass_budget)
    if not args.json:
        print(format_cascade(report), file=sys.stderr)
    def no_curve(result: dict) -> dict:
        return {k: v for k, v in result.items() if k != "curve"}

    print(json.dumps(report | {"scorers": {n: no_curve(r) for n, r in report["scorers"].items()},
                               "oracle": no_curve(report["oracle"])}))
    return 0


def judge_labels(labels: Path) -> None:
    """Have a cloud judge every edge answer in ``labels`` that it has not judged yet."""
    from tandem.router.eval.collect import read_jsonl
    from tandem.router.eval.judge import judge_rows
    from tandem.shared.models import DEFAULT_MODEL, load_tokenizer, resolve_model
    from tandem.shared.process import ServiceProcess

    rows = read_jsonl(labels)
    if all("cloud_logprobs" in r for r in rows):
        return
    with tempfile.TemporaryDirectory() as tmp:
        cloud = ServiceProcess("cloud", ["--port", "0", "--metrics-port", "-1"], Path(tmp))
        try:
            cloud.wait_ready(600)
            judge_rows(rows, cloud.address, load_tokenizer(resolve_model(DEFAULT_MODEL)),
                       labels)
        finally:
            cloud.stop()
    print(f"the cloud judged {len(rows)} edge answers in {labels}", file=sys.stderr)


def format_cascade(report: dict) -> str:
    judged = ("share of right answers" if report["quality"] == "correct" else
              f"share of edge answers with {report['quality']} >= {report['bar']} vs cloud")
    lines = [f"{report['prompts']} prompts, edge-only quality {report['edge_only_quality']:.3f}, "
             f"cloud-only {report['cloud_only_quality']:.3f} ({judged}; mean agreement with "
             f"the cloud answer {report['edge_only_agreement']:.3f})",
             f"{'router':<18} {'APGR':>6} {'saved@95%':>10} {'APGR(passes)':>13} "
             f"{'saved@95%(passes)':>18}"]
    rows = list(report["scorers"].items()) + [("random", report["random"]),
                                              ("oracle", report["oracle"])]
    def figure(value: float | None, width: int) -> str:
        return f"{value:>{width}.3f}" if value is not None else f"{'n/a':>{width}}"

    for name, r in rows:
        lines.append(f"{name:<18} {figure(r['apgr'], 6)} {figure(r['cost_reduction_at_95'], 10)} "
                     f"{figure(r['passes']['apgr'], 13)} "
                     f"{figure(r['passes']['cost_reduction_at_95'], 18)}")
    if report["best_scorer"] is None:
        lines.append("APGR n/a: the cloud is no better than the edge on these prompts")
    else:
        lines.append(f"best scorer {report['best_scorer']} closes {report['gap_closed']} of the "
                     "gap from random to the oracle (token axis)")
    if report.get("speculative_cascade"):
        lines.append(f"{'speculative-cascade τ':<22} {'quality':>8} {'passes saved':>13} "
                     f"{'cloud tokens saved':>19}")
        for p in report["speculative_cascade"]:
            lines.append(f"{p['tau']:<22g} {p['quality']:>8.3f} {p['cloud_pass_reduction']:>13.3f} "
                         f"{p['cloud_token_reduction']:>19.3f}")
    if "calibrated_leniency" in report:
        chosen = report["calibrated_leniency"]
        lines.append("no measured τ is within the pass budget" if chosen is None else
                     f"τ for a pass budget of {chosen['pass_budget']}: {chosen['tau']} "
                     f"(--deferral-leniency; cloud pass share {chosen['cloud_pass_share']}, "
                     f"quality {chosen['quality']})")
    return "\n".join(lines)
