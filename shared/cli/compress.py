"""`tandem compress`: build edge artifacts from a cloud model (HF folder or GGUF) — torch
runtime artifacts (quantized, pruned, activation-sparse, flash-offloaded) and GGUFs
re-quantized through llama.cpp — and print a summary of size and perplexity change."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tandem.shared.argtypes import gguf_types


def add_parser(sub: argparse._SubParsersAction) -> None:
    from tandem.shared.models import DEFAULT_MODEL

    p = sub.add_parser("compress", help="Build compressed edge models and report size/perplexity.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Packaged alias, .gguf path or HF folder.")
    p.add_argument("--out", default="edge-artifacts", help="Output folder (one subfolder each).")
    p.add_argument("--recipes", default="resident,int8,int4,wanda50,wanda-2:4,act-sparse50,"
                   "int8-act-sparse50,flash-naive,flash",
                   help="Comma-separated torch recipes (see tandem.edge.compress.recipes.RECIPES); "
                   "empty for none.")
    p.add_argument("--gguf-types", type=gguf_types, default="Q8_0,Q4_K_M,Q3_K,Q2_K",
                   help="Comma-separated llama.cpp types to re-quantize a GGUF model to; empty for none.")
    p.add_argument("--budget", type=float, default=None,
                   help="Flash recipes: DRAM budget as a fraction of the model's bytes.")
    p.add_argument("--window", type=int, default=None, help="Flash recipes: fixed k (tokens).")
    p.add_argument("--group-size", type=int, default=None, choices=(32, 64, 128, 256),
                   help="INT4 group size (the INT4 kernel's).")
    p.add_argument("--eval-tokens", type=int, default=512, help="Evaluation tokens for perplexity.")
    p.add_argument("--threads", type=int, default=0, help="Threads (0: every core).")
    p.add_argument("--json", action="store_true", help="Print only the JSON summary on stdout.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from tandem.edge.compress.recipes import RECIPES, with_overrides
    from tandem.edge.compress.pipeline import compress
    from tandem.shared.models import ModelNotFound, resolve_model

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    try:
        source = resolve_model(args.model)
    except ModelNotFound as exc:
        print(f"tandem compress: {exc}", file=sys.stderr)
        return 2
    names = [n for n in args.recipes.split(",") if n]
    overrides = {}
    for name in names:
        if name not in RECIPES:
            print(f"tandem compress: unknown recipe {name!r}; known: {sorted(RECIPES)}", file=sys.stderr)
            return 2
        changes = {k: v for k, v in (("budget_fraction", args.budget), ("window", args.window),
                                     ("group_size", args.group_size)) if v is not None}
        overrides[name] = with_overrides(RECIPES[name], **changes)
    out = Path(args.out)
    rows: list[dict[str, object]] = []
    if names:
        for r in compress(source, names, out, eval_tokens=args.eval_tokens, overrides=overrides):
            rows.append({"name": r.name, "kind": "torch", "path": r.folder,
                         "model_bytes": r.model_bytes, "ppl": r.ppl})
    if args.gguf_types:
        if not source.is_gguf:
            print("tandem compress: --gguf-types needs a .gguf model", file=sys.stderr)
            return 2
        rows += _gguf_rows(source, args.gguf_types, out / "gguf", args.eval_tokens, threads)
    _add_changes(rows)
    print(_table(rows), file=sys.stderr)
    print(json.dumps({"artifacts": rows}, indent=None if args.json else 2))
    return 0


def _gguf_rows(source, types: list[str], out: Path, eval_tokens: int, threads: int) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    from tandem.shared.gguf_quant import requantize
    from tandem.edge.compress.perplexity import gguf_perplexity, token_windows
    from tandem.edge.compress.pipeline import text_ids

    windows = token_windows(text_ids(source, "evaluation"), 256, eval_tokens)
    rows: list[dict[str, object]] = [{
        "name": f"gguf-source ({source.path.name})", "kind": "gguf", "path": str(source.path),
        "model_bytes": source.path.stat().st_size,
        "ppl": gguf_perplexity(str(source.path), windows, threads)}]
    for name in tqdm(types, desc="requantize", unit="type"):
        result = requantize(source.path, out, name, threads)
        rows.append({"name": f"gguf-{name}", "kind": "gguf", "path": result.path,
                     "model_bytes": result.bytes,
                     "ppl": gguf_perplexity(result.path, windows, threads)})
    return rows


def _add_changes(rows: list[dict[str, object]]) -> None:
    """Size and perplexity relative to each family's baseline (torch resident / GGUF source)."""
    for kind, base_name in (("torch", "resident"), ("gguf", "gguf-source")):
        base = next((r for r in rows if r["kind"] == kind and str(r["name"]).startswith(base_name)), None)
        for r in rows:
            if base and r["kind"] == kind and r["ppl"] and base["ppl"]:
                r["size_ratio"] = round(int(r["model_bytes"]) / int(base["model_bytes"]), 4)  # type: ignore[arg-type]
                r["ppl_change"] = round(float(r["ppl"]) / float(base["ppl"]) - 1, 4)  # type: ignore[arg-type]


def _table(rows: list[dict[str, object]]) -> str:
    lines = [f"{'artifact':34} {'MB':>9} {'ppl':>8} {'size':>7} {'ppl Δ':>8}"]
    for r in rows:
        ppl = f"{r['ppl']:.3f}" if r.get("ppl") else "-"
        size = f"{r['size_ratio']:.2f}x" if "size_ratio" in r else "-"
        change = f"{100 * r['ppl_change']:+.1f}%" if "ppl_change" in r else "-"  # type: ignore[operator]
        lines.append(f"{str(r['name']):34} {int(r['model_bytes']) / 1e6:9.1f} {ppl:>8} {size:>7} {change:>8}")  # type: ignore[arg-type]
    return "\n".join(lines)
