"""`tandem bench edge`: every edge format on the same evaluation text — perplexity, model
and DRAM bytes, peak RSS, storage bytes and reads per token, decode tok/s.

Each configuration is measured in its own fresh process (spawned), loading its artifact
from disk, so peak RSS is that configuration's own (``baseline_rss_bytes`` is the same
process's RSS before loading the model: interpreter, torch, tokenizer-free imports).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.shared.argtypes import shares

# (config name, artifact recipe, load overrides): the torch configurations measured.
TORCH_CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("torch-resident-fp32", "resident", {}),
    ("torch-int8", "int8", {}),
    ("torch-int4-awq-g32", "int4", {}),
    ("torch-w8a8-naive", "w8a8", {}),
    ("torch-w8a8-smoothquant", "w8a8-smoothquant", {}),
    ("torch-w8a8-llm_int8", "w8a8-llm-int8", {}),
    ("torch-wanda50", "wanda50", {}),
    ("torch-wanda-2:4", "wanda-2:4", {}),
    ("torch-act-sparse50", "act-sparse50", {}),
    ("torch-int8-act-sparse50", "int8-act-sparse50", {}),
    ("flash-naive", "flash-naive", {}),
    ("flash-naive-fp16", "flash-naive-fp16", {}),
    ("flash-int8sel-b60", "flash-int8sel", {"budget_fraction": 0.6}),
    ("flash-int8sel-b55", "flash-int8sel", {"budget_fraction": 0.55}),
    ("flash-int8sel-b50", "flash-int8sel", {"budget_fraction": 0.5}),
    ("flash-int8sel-fp16-b60", "flash-int8sel-fp16", {"budget_fraction": 0.6}),
    ("flash-int8sel-fp16-b60-k0", "flash-int8sel-fp16", {"budget_fraction": 0.6, "window": 0}),
    ("flash-int8sel-fp16-b60-k2", "flash-int8sel-fp16", {"budget_fraction": 0.6, "window": 2}),
    ("flash-int8sel-fp16-b60-threads", "flash-int8sel-fp16", {"budget_fraction": 0.6, "io_engine": "threads"}),
    ("flash-int8sel-fp16-b55", "flash-int8sel-fp16", {"budget_fraction": 0.55}),
    ("flash-int8sel-fp16-b50", "flash-int8sel-fp16", {"budget_fraction": 0.5}),
    ("flash-int8sel-fp16-b70", "flash-int8sel-fp16", {"budget_fraction": 0.7}),
    ("flash-int8sel-fp16-b80", "flash-int8sel-fp16", {"budget_fraction": 0.8}),
    ("flash-int8sel-fp16-b90", "flash-int8sel-fp16", {"budget_fraction": 0.9}),
    ("flash-lowrank-b60", "flash", {"budget_fraction": 0.6}),
    # The compute floor: a buffer for every neuron (105% of the model's bytes: the records'
    # padding) and a window longer than the run, so reads stop once all were needed once.
    ("flash-int8sel-fp16-allcached", "flash-int8sel-fp16", {"budget_fraction": 1.05, "window": 1000}),
]
PAIRED_BASELINE = "resident"  # flash configs also time decoding against it, alternating


@dataclass
class BenchSettings:
    eval_tokens: int = 256
    prompt_tokens: int = 32
    decode_tokens: int = 48
    latency_pairs: int = 7  # flash: alternating blocks of flash / resident decoding
    latency_pair_tokens: int = 8
    threads: int = 1
    repeats: int = 7  # llama.cpp plain/through-Tandem pairs
    llama_pair_tokens: int = 64  # tokens decoded by each side of a pair
    only: list[str] = field(default_factory=list)


def _peak_rss() -> int:
    """This process image's RSS high-water mark (VmHWM). Not ru_maxrss: Linux carries that
    across fork+exec, so a spawned child would report its parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak_rss() -> None:
    """Start a new VmHWM measurement (Linux: writing 5 to clear_refs resets it)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _current_rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_torch(folder: str, overrides: dict[str, Any], eval_ids: list[int],
                  settings: BenchSettings, paired_folder: str | None = None) -> dict[str, Any]:
    """Runs in a fresh process: load one artifact and measure it (and, with
    ``paired_folder``, its decode latency against that runtime's, side by side)."""
    import torch

    from tandem.edge import artifacts
    from tandem.edge.compress.perplexity import runtime_perplexity, token_windows

    torch.set_num_threads(settings.threads)
    baseline = _current_rss()
    built = artifacts.load(Path(folder), **overrides)
    runtime, store = built.runtime, built.store
    try:
        ppl = runtime_perplexity(runtime, token_windows(eval_ids, 256, settings.eval_tokens))
        eval_peak = _peak_rss()  # scoring 256 positions holds [256, V] logits in fp64
        prefill = eval_ids[:256]  # where integer matmuls pay: many tokens per product
        runtime.truncate(0)
        started = time.perf_counter()
        runtime.forward(prefill)
        prefill_tok_s = len(prefill) / (time.perf_counter() - started)
        _reset_peak_rss()
        runtime.truncate(0)
        logits = runtime.forward(eval_ids[: settings.prompt_tokens])
        bytes0, reads0 = (store.bytes_read, store.reads) if store else (0, 0)
        phases0 = dict(store.phase_seconds) if store else {}
        started = time.perf_counter()
        for _ in range(settings.decode_tokens):
            logits = runtime.forward([int(logits[-1].argmax())])
        elapsed = time.perf_counter() - started
        n = settings.decode_tokens
        result = {"ppl": ppl, "model_bytes": built.model_bytes, "dram_bytes": runtime.weight_bytes,
                "peak_rss_bytes": _peak_rss(), "baseline_rss_bytes": baseline,
                "peak_rss_eval_bytes": eval_peak,
                "bytes_read_per_token": (store.bytes_read - bytes0) / n if store else 0,
                "reads_per_token": (store.reads - reads0) / n if store else 0,
                "tok_s": n / elapsed, "prefill_tok_s": prefill_tok_s,
                "window": built.window, "capacity": built.capacity}
        if store is not None:  # measured profile of a decoded token (ms)
            phases = {k: (v - phases0.get(k, 0.0)) * 1e3 / n for k, v in store.phase_seconds.items()}
            phases["outside_ffn"] = elapsed * 1e3 / n - sum(phases.values())
            result["flash_ms_per_token"] = phases
        if paired_folder is not None:  # after peak RSS was taken
            result.update(paired_latency(runtime, paired_folder, eval_ids, settings))
        return result
    finally:
        built.close()


def paired_latency(runtime: Any, baseline_folder: str, eval_ids: list[int],
                   settings: BenchSettings) -> dict[str, Any]:
    """Decode-latency ratio to the baseline runtime, robust to load that drifts over a
    run: blocks of ``latency_pair_tokens`` greedy tokens from each, alternating (which
    goes first alternates too); the median of the per-pair ratios of ms per token."""
    from tandem.edge import artifacts

    baseline = artifacts.load(Path(baseline_folder))
    try:
        sides = {"config": runtime, "baseline": baseline.runtime}
        last = {}
        for key, rt in sides.items():
            rt.truncate(0)
            last[key] = int(rt.forward(eval_ids[: settings.prompt_tokens])[-1].argmax())
        ms: dict[str, list[float]] = {"config": [], "baseline": []}
        for pair in range(settings.latency_pairs):
            for key in (("config", "baseline") if pair % 2 == 0 else ("baseline", "config")):
                rt, token = sides[key], last[key]
                started = time.perf_counter()
                for _ in range(settings.latency_pair_tokens):
                    token = int(rt.forward([token])[-1].argmax())
                ms[key].append((time.perf_counter() - started) * 1e3 / settings.latency_pair_tokens)
                last[key] = token
        ratios = [c / b for c, b in zip(ms["config"], ms["baseline"])]
        return {"latency_vs_resident": statistics.median(ratios), "latency_pairs": ratios,
                "paired_ms_per_token": {"config": statistics.median(ms["config"]),
                                        "resident": statistics.median(ms["baseline"])}}
    finally:
        baseline.close()


def measure_llama(model_path: str, eval_ids: list[int], settings: BenchSettings) -> dict[str, Any]:
    """Runs in a fresh process: plain llama-cpp-python and Tandem's llama.cpp backend,
    decoding the same greedy tokens in ``repeats`` back-to-back pairs (which side goes
    first alternates); the ratio is the median of the per-pair ratios, so load that
    drifts over the run affects both sides of a pair alike."""
    import asyncio

    from llama_cpp import Llama

    from tandem.edge.llama_cpp_backend import LlamaCppBackend
    from tandem.edge.compress.perplexity import gguf_perplexity, token_windows
    from tandem.shared.sampling import SamplingParams, TokenSampler
    from tandem.shared.tier_handler import TokenRequest

    baseline = _current_rss()
    prompt, n = eval_ids[: settings.prompt_tokens], settings.llama_pair_tokens
    plain = Llama(model_path=model_path, n_ctx=512, n_threads=settings.threads,
                  n_threads_batch=settings.threads, verbose=False)
    backend = LlamaCppBackend.open(model_path, context_window=512, threads=settings.threads,
                                   adaptive_threads=False)  # the same threads as plain

    def run_plain() -> float:
        plain.reset()
        started = time.perf_counter()
        for i, _ in enumerate(plain.generate(prompt, top_k=1, temp=0.0, reset=True)):
            if i == 0:
                started = time.perf_counter()  # decode only: after the prompt's first token
            if i == n:
                break
        return n / (time.perf_counter() - started)

    async def run_tandem() -> float:
        stream = backend.generate(TokenRequest(
            prompt, TokenSampler(SamplingParams(max_tokens=n + 1)), "bench"))
        started, i = time.perf_counter(), 0
        async for _ in stream:
            if i == 0:
                started = time.perf_counter()
            if i == n:
                break
            i += 1
        await stream.aclose()
        return i / (time.perf_counter() - started)  # i < n if the model ended the text

    run_plain()  # warm both (first-call allocations) before measuring
    asyncio.run(run_tandem())
    plain_speeds, tandem_speeds = [], []
    for pair in range(settings.repeats):
        if pair % 2:
            tandem_speeds.append(asyncio.run(run_tandem()))
            plain_speeds.append(run_plain())
        else:
            plain_speeds.append(run_plain())
            tandem_speeds.append(asyncio.run(run_tandem()))
    ratios = [t / p for t, p in zip(tandem_speeds, plain_speeds)]
    weights = os.path.getsize(model_path)
    result = {"model_bytes": weights, "dram_bytes": weights,  # mmapped and fully used
              "bytes_read_per_token": 0, "reads_per_token": 0,
              "tok_s": statistics.median(tandem_speeds),
              "plain_llama_cpp_tok_s": statistics.median(plain_speeds),
              "tandem_vs_plain": statistics.median(ratios),
              "tandem_vs_plain_pairs": ratios,
              "tok_s_samples": {"plain": plain_speeds, "tandem": tandem_speeds}}
    plain.close()
    backend.close()
    result["ppl"] = gguf_perplexity(model_path, token_windows(eval_ids, 256, settings.eval_tokens),
                                    settings.threads)
    result["peak_rss_bytes"], result["baseline_rss_bytes"] = _peak_rss(), baseline
    return result


def in_fresh_process(fn: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)  # type: ignore[no-any-return]


def ensure_artifacts(source: Any, out: Path, recipes: list[str], rebuild: bool) -> None:
    """Build the recipes' artifacts once (reused by later runs unless ``rebuild``, or
    written by a Tandem whose artifact format differs)."""
    from tandem.edge.artifacts import is_current
    from tandem.edge.compress.pipeline import compress

    missing = [r for r in recipes if rebuild or not is_current(out / r.replace(":", "-"))]
    if missing:
        compress(source, missing, out, evaluate=False)


def run_bench(source: Any, out: Path, settings: BenchSettings, rebuild: bool = False
              ) -> dict[str, Any]:
    import torch

    from tandem.edge.compress.pipeline import text_ids

    torch.set_num_threads(settings.threads)  # building too: idle OpenMP threads spin on a busy box
    configs = [c for c in TORCH_CONFIGS if not settings.only or c[0] in settings.only]
    paired = any(name.startswith("flash") for name, _, _ in configs)
    recipes = {recipe for _, recipe, _ in configs} | ({PAIRED_BASELINE} if paired else set())
    ensure_artifacts(source, out, sorted(recipes), rebuild)
    eval_ids = text_ids(source, "evaluation")
    results = []
    if source.is_gguf and (not settings.only or "llama.cpp-Q4_1" in settings.only):
        row = in_fresh_process(measure_llama, str(source.path), eval_ids, settings)
        results.append({"name": "llama.cpp-Q4_1", **row})
    for name, recipe, overrides in configs:
        folder = str(out / recipe.replace(":", "-"))
        baseline = str(out / PAIRED_BASELINE) if name.startswith("flash") else None
        results.append({"name": name, **in_fresh_process(measure_torch, folder, overrides,
                                                         eval_ids, settings, baseline)})
    return {"configs": results, "settings": settings.__dict__,
            "eval_tokens": min(settings.eval_tokens, len(eval_ids))}


def run_concurrency(source: Any, args: argparse.Namespace) -> dict[str, Any]:
    from tandem.edge.bench import measure_concurrency
    from tandem.edge.compress.pipeline import text_ids
    from tandem.shared.gguf_quant import requantized

    levels = [int(x) for x in args.concurrency.split(",")]
    threads = args.threads or os.cpu_count() or 1
    path = requantized(source, args.weights) if args.weights else source.path
    rows = measure_concurrency(str(path), text_ids(source, "evaluation"), levels,
                               threads, args.stream_tokens, max(args.repeats // 2, 1))
    return {"model": source.name, "weights": args.weights or "as shipped", "threads": threads,
            "stream_tokens": args.stream_tokens, "concurrency": rows}


def table(report: dict[str, Any]) -> str:
    if "kv_eviction" in report:
        kv = report["kv_eviction"]
        return "\n".join([f"{kv['tokens']} tokens, full cache perplexity {kv['full_ppl']:.3f}",
                          f"{'budget':>6} {'method':>7} {'ppl':>8} {'vs full':>8}"] + [
            f"{r['budget']:>6g} {r['method']:>7} {r['ppl']:>8.3f} {100 * r['vs_full']:>+7.1f}%"
            for r in kv["rows"]])
    if "concurrency" in report:
        return "\n".join([f"{'streams':>7} {'tok/s':>8} {'vs 1':>6} identical"] + [
            f"{r['streams']:>7} {r['tok_s']:>8.1f} {r['vs_one_stream']:>6.2f} {r['identical']}"
            for r in report["concurrency"]])
    lines = [f"{'config':31} {'ppl':>7} {'model MB':>9} {'DRAM MB':>8} {'peakRSS':>8} "
             f"{'read MB/tok':>11} {'reads/tok':>9} {'tok/s':>7} {'prefill':>8} {'k':>3} "
             f"{'x resident':>10}"]
    for c in report["configs"]:
        paired = f"{c['latency_vs_resident']:10.2f}" if "latency_vs_resident" in c else f"{'':10}"
        lines.append(f"{c['name']:31} {c['ppl']:7.2f} {c['model_bytes'] / 1e6:9.1f} "
                     f"{c['dram_bytes'] / 1e6:8.1f} {c['peak_rss_bytes'] / 1e6:8.0f} "
                     f"{c['bytes_read_per_token'] / 1e6:11.2f} {c['reads_per_token']:9.0f} "
                     f"{c['tok_s']:7.2f} {c.get('prefill_tok_s', 0):8.1f} "
                     f"{c.get('window', 0):3d} {paired}")
        if "flash_ms_per_token" in c:
            lines.append("  ms/token: " + ", ".join(f"{k} {v:.1f}" for k, v in c["flash_ms_per_token"].items()))
        if "tandem_vs_plain" in c:
            lines.append(f"  through Tandem / plain llama-cpp-python: {c['tandem_vs_plain']:.3f} "
                         f"(median of {len(c['tandem_vs_plain_pairs'])} pairs; medians "
                         f"{c['tok_s']:.1f} vs {c['plain_llama_cpp_tok_s']:.1f} tok/s)")
    return "\n".join(lines)


def plot_frontier(report: dict[str, Any], path: str) -> None:
    """Flash budget frontier: DRAM share of the model vs bytes read per token and perplexity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [c for c in report["configs"] if c["name"].startswith("flash") and c["capacity"]
            and re.search(r"-b\d+$", c["name"])]  # the budget sweeps, default k
    naive = next((c for c in report["configs"] if "naive" in c["name"]), None)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for selector in sorted({c["name"].split("-b")[0] for c in rows}):
        sel = sorted((c for c in rows if c["name"].startswith(selector + "-b")),
                     key=lambda c: c["dram_bytes"] / c["model_bytes"])
        share = [c["dram_bytes"] / c["model_bytes"] for c in sel]
        left.plot(share, [c["bytes_read_per_token"] / 1e6 for c in sel], "o-", label=selector)
        right.plot(share, [c["ppl"] for c in sel], "o-", label=selector)
    if naive:
        left.axhline(naive["bytes_read_per_token"] / 1e6, ls="--", c="gray", label="naive")
    resident = next((c for c in report["configs"] if "resident" in c["name"]), None)
    if resident:
        right.axhline(resident["ppl"], ls="--", c="gray", label="resident fp32")
    left.set(xlabel="DRAM / model bytes", ylabel="MB read per token", yscale="log")
    right.set(xlabel="DRAM / model bytes", ylabel="perplexity")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


HELP = "Perplexity, bytes, RSS, storage reads and tok/s per edge format."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from tandem.shared.models import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help="Packaged alias, .gguf path or HF folder.")
    p.add_argument("--artifacts", default=None,
                   help="Folder for the built artifacts (default: the Tandem cache); reused.")
    p.add_argument("--rebuild", action="store_true", help="Rebuild the artifacts first.")
    p.add_argument("--eval-tokens", type=int, default=256, help="Evaluation tokens (256 per window).")
    p.add_argument("--decode-tokens", type=int, default=48,
                   help="Tokens decoded for tok/s (flash: from an empty window after the prompt).")
    p.add_argument("--threads", type=int, default=None,
                   help="Compute threads (default: 1 for the formats, steadier on a shared box; "
                        "every core for --concurrency, as the edge service runs).")
    p.add_argument("--repeats", type=int, default=7,
                   help="llama.cpp plain/through-Tandem pairs (median of per-pair ratios).")
    p.add_argument("--only", default="", help="Comma-separated config names to run.")
    p.add_argument("--plot", default=None, help="Also draw the flash frontier to this PNG.")
    p.add_argument("--concurrency", default="",
                   help="Instead of the formats: the llama.cpp backend's parallel slots, "
                        "aggregate decode tok/s at these stream counts (e.g. 1,2,4,8), each "
                        "stream's greedy output checked against decoding it alone.")
    p.add_argument("--stream-tokens", type=int, default=64,
                   help="--concurrency: tokens each stream decodes.")
    p.add_argument("--kv-budget", default="", type=shares,
                   help="Instead: perplexity of a long text with the KV cache held to these "
                        "shares of the sequence (e.g. 0.5,0.2), by H2O and by the recent "
                        "window alone, against the full cache (the fp32 torch runtime).")
    p.add_argument("--kv-tokens", type=int, default=2048,
                   help="--kv-budget: length of the long text (the evaluation text continued "
                        "by the model).")
    p.add_argument("--weights", default="",
                   help="--concurrency: the GGUF re-quantized to this format first (as the "
                        "edge's --weights), e.g. Q8_0.")


def run_kv_eviction(source: Any, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from tandem.edge.compress.kv_bench import kv_eviction_report, long_text
    from tandem.edge.compress.pipeline import text_ids
    from tandem.edge.torch_backend import resident_from_source

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    runtime = resident_from_source(source).runtime
    ids = long_text(runtime, text_ids(source, "evaluation"), args.kv_tokens)
    budgets = [float(v) for v in args.kv_budget.split(",")]
    return {"model": source.name, "runtime": "torch fp32", "threads": torch.get_num_threads(),
            "kv_eviction": kv_eviction_report(runtime, ids, budgets)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tandem.shared.models import cache_root, resolve_model

    source = resolve_model(args.model)
    if args.concurrency:
        return run_concurrency(source, args)
    if args.kv_budget:
        return run_kv_eviction(source, args)
    out = Path(args.artifacts) if args.artifacts else cache_root() / "edge-bench" / (
        f"{source.path.stem}-{source.fingerprint()}")
    settings = BenchSettings(eval_tokens=args.eval_tokens, decode_tokens=args.decode_tokens,
                             threads=args.threads or 1, repeats=args.repeats,
                             only=[n for n in args.only.split(",") if n])
    report = run_bench(source, out, settings, rebuild=args.rebuild)
    if args.plot:
        plot_frontier(report, args.plot)
    return report
