"""`tandem distill`: distil the torch edge (INT4, quantizer in the loop) toward the cloud
on the cloud's answers to the shipped training prompts, then export it through the
compression pipeline (edge/distill.py) and into GGUFs for the llama.cpp edge."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tandem.shared.argtypes import gguf_types
from tandem.shared.gguf_quant import GGUF_TYPES


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
    p.add_argument("--gguf-type", default="", choices=("", *GGUF_TYPES), metavar="TYPE",
                   help="Train for an edge served by llama.cpp at TYPE: that format's "
                        "quantization in the loop instead of INT4 (exported at TYPE too).")
    p.add_argument("--gguf-types", type=gguf_types, default="Q4_1",
                   help="llama.cpp types to re-quantize the exported F32 GGUF "
                        "(out/gguf/distilled.gguf) to; empty for none. Needs a .gguf --model "
                        "(its tokenizer is copied).")
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
                                   gguf_type=args.gguf_type,
                                   checkpoint_every=args.checkpoint_every)
    except ValueError as exc:
        print(f"tandem distill: {exc}", file=sys.stderr)
        return 2
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    source = resolve_model(args.model)
    if (args.gguf_types or args.gguf_type) and not source.is_gguf:
        print("tandem distill: --gguf-types and --gguf-type need a .gguf --model (the GGUF's "
              "tokenizer is copied); pass --gguf-types '' for none", file=sys.stderr)
        return 2
    exports = list(dict.fromkeys([*args.gguf_types, *filter(None, [args.gguf_type])]))
    tokenizer = load_tokenizer(source)
    rows = read_jsonl(args.labels or DATA / "labels_q3km_train.jsonl")
    data = sequences(rows, tokenizer, settings.max_tokens)
    out = Path(args.out)
    student = load_causal_lm(source, "float32")
    ggml_types = _ggml_types(student, source, args.gguf_type) if args.gguf_type else None
    report = distill(load_causal_lm(source, "float32"), student, data,
                     tokenizer.pad_token_id or 0, out, settings, ggml_types=ggml_types)
    folder = out / "hf"
    student.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    recipe = with_overrides(RECIPES["int4-noawq"], group_size=settings.group)
    results = compress(resolve_model(str(folder)), ["int4-noawq"], out / "artifacts",
                       overrides={"int4-noawq": recipe})
    report |= {"sequences": len(data), "model_folder": str(folder),
               "artifact": results[0].folder, "artifact_ppl": results[0].ppl,
               "gguf": _export_ggufs(student, source, out / "gguf", exports, threads)}
    write_report(out, report)
    print(json.dumps(report))
    return 0


def _ggml_types(student, source, name: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The student's weight names -> the ggml type llama.cpp stores each in at ``name``
    (read from the source re-quantized to it, made once and cached)."""
    from tandem.shared.gguf_export import gguf_names
    from tandem.shared.gguf_quant import requantized, tensor_types

    types = tensor_types(requantized(source, name))
    return {hf: types[gguf] for hf, gguf in gguf_names(student).items()}


def _export_ggufs(student, source, folder: Path, types: list[str],  # type: ignore[no-untyped-def]
                  threads: int) -> list[dict[str, object]]:
    """The F32 GGUF and its llama.cpp re-quantizations (serve one with
    `tandem edge --model <path>`)."""
    from tandem.shared.gguf_export import export_gguf
    from tandem.shared.gguf_quant import requantize

    if not types:
        return []
    f32 = export_gguf(student, source.path, folder / "distilled.gguf")
    rows: list[dict[str, object]] = [{"name": "F32", "path": str(f32), "bytes": f32.stat().st_size}]
    for name in types:
        result = requantize(f32, folder, name, threads)
        rows.append({"name": name, "path": result.path, "bytes": result.bytes})
    return rows
