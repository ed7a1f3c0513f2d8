"""`tandem distill`: distil the torch edge (INT4, quantizer in the loop) toward the cloud
on the cloud's answers to the shipped training prompts, then export it through the
compression pipeline (edge/distill.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from tandem.shared.models import DEFAULT_MODEL

    p = sub.add_parser("distill", help="Train the edge toward the cloud's distributions.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="The cloud's model (teacher and "
                   "starting point of the student).")
    p.add_argument("--labels", default=None,
                   help="JSONL with `prompt` and the cloud's answer `cloud_text` (default: "
                        "router/data/labels_q3km_train.jsonl, the shipped training prompts).")
    p.add_argument("--out", default="distilled-edge", help="Output folder (checkpoints, "
                   "hf/ model folder, artifacts/; an existing checkpoint is resumed).")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--group-size", type=int, default=32, choices=(32, 64, 128, 256),
                   help="INT4 group of the quantizer in the loop and of the export.")
    p.add_argument("--kl", default="forward", choices=("forward", "reverse"),
                   help="forward: KL(cloud ‖ edge); reverse: KL(edge ‖ cloud) (MiniLLM).")
    p.add_argument("--checkpoint-every", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="Torch threads (0: every core).")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from tandem.edge.compress.pipeline import compress
    from tandem.edge.compress.recipes import RECIPES, with_overrides
    from tandem.edge.distill import DistillSettings, distill, sequences, write_report
    from tandem.router.eval.collect import read_jsonl
    from tandem.router.scorers import DATA
    from tandem.shared.model_loader import load_causal_lm
    from tandem.shared.models import load_tokenizer, resolve_model

    try:
        settings = DistillSettings(steps=args.steps, batch=args.batch, lr=args.lr,
                                   group=args.group_size, kl=args.kl,
                                   checkpoint_every=args.checkpoint_every)
    except ValueError as exc:
        print(f"tandem distill: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    rows = read_jsonl(args.labels or DATA / "labels_q3km_train.jsonl")
    data = sequences(rows, tokenizer, settings.max_tokens)
    out = Path(args.out)
    student = load_causal_lm(source, "float32")
    report = distill(load_causal_lm(source, "float32"), student, data,
                     tokenizer.pad_token_id or 0, out, settings)
    folder = out / "hf"
    student.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    recipe = with_overrides(RECIPES["int4-noawq"], group_size=settings.group)
    results = compress(resolve_model(str(folder)), ["int4-noawq"], out / "artifacts",
                       overrides={"int4-noawq": recipe})
    report |= {"sequences": len(data), "model_folder": str(folder),
               "artifact": results[0].folder, "artifact_ppl": results[0].ppl}
    write_report(out, report)
    print(json.dumps(report))
    return 0
