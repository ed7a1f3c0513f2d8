"""`tandem bench sdk`: what the SDK's on-device mode adds over calling the edge model
directly. Side by side in one process, interleaved per prompt: llama-cpp-python's own
token loop on the same GGUF and prompt tokens (baseline) versus ``TandemClient.stream``
with the ``edge`` policy (router core, in-process edge tier, detokenization, chunking).
Both decode greedily with the same thread count; TTFT and decode tok/s (excluding the
first token) per call, medians reported as JSON on stdout and a table on stderr."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

PROMPTS = [
    "Explain what a CPU does in one sentence.",
    "Write a haiku about the sea.",
    "Give me three tips for staying healthy.",
    "What is photosynthesis?",
]


HELP = "SDK on-device mode vs the edge model called directly."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="Passes over the prompts.")


def _direct(llm: Any, prompt_ids: list[int], eos: set[int], max_tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    first = end = started
    produced = 0
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
        if token in eos:
            break
        produced += 1
        end = time.perf_counter()
        if produced == 1:
            first = end
        if produced >= max_tokens:
            break
    return _row(started, first, end, produced)


def _sdk(client: Any, prompt: str, max_tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    first = end = started
    produced = 0
    for chunk in client.stream(prompt, policy="edge", max_tokens=max_tokens, temperature=0.0):
        end = time.perf_counter()
        if produced == 0:
            first = end
        produced += len(chunk.token_ids)
    return _row(started, first, end, produced)


def _row(started: float, first: float, end: float, produced: int) -> dict[str, float]:
    decode_s = end - first
    return {"ttft_ms": (first - started) * 1000, "tokens": produced,
            "decode_tok_s": (produced - 1) / decode_s if produced > 1 and decode_s > 0 else 0.0}


def _median(rows: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from llama_cpp import Llama

    from tandem.edge.sdk.client import TandemClient
    from tandem.shared.models import eos_token_ids, resolve_model
    from tandem.shared.prompting import PromptInput, render

    client = TandemClient(mode="on_device", model=args.model, threads=args.threads,
                          policy="edge", cloud_address="127.0.0.1:1")  # the cloud is not used
    try:
        core = client._client._engine.core  # type: ignore[attr-defined]
        tokenizer = core.tokenizer
        eos = set(eos_token_ids(tokenizer))
        llm = Llama(model_path=str(resolve_model(args.model).path), n_ctx=4096,
                    n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
        direct, sdk = [], []
        for _ in range(args.repeats):
            for prompt in PROMPTS:  # interleaved so load changes hit both alike
                ids = render(tokenizer, PromptInput(prompt=prompt))
                direct.append(_direct(llm, ids, eos, args.max_tokens))
                sdk.append(_sdk(client, prompt, args.max_tokens))
        llm.close()
    finally:
        client.close()
    report = {"model": args.model, "threads": args.threads, "max_tokens": args.max_tokens,
              "calls": len(direct)}
    for name, rows in (("direct_llama_cpp", direct), ("sdk_on_device", sdk)):
        report[name] = {k: _median(rows, k) for k in ("ttft_ms", "decode_tok_s", "tokens")}
    d, s = report["direct_llama_cpp"], report["sdk_on_device"]
    report["sdk_added_ttft_ms"] = round(s["ttft_ms"] - d["ttft_ms"], 2)
    report["sdk_decode_ratio"] = round(s["decode_tok_s"] / d["decode_tok_s"], 3) if d["decode_tok_s"] else None
    return report


def table(report: dict[str, Any]) -> str:
    lines = [f"{'':18}{'TTFT ms':>10}{'decode tok/s':>14}{'tokens':>8}"]
    for name in ("direct_llama_cpp", "sdk_on_device"):
        r = report[name]
        lines.append(f"{name:18}{r['ttft_ms']:>10}{r['decode_tok_s']:>14}{r['tokens']:>8}")
    return "\n".join(lines)
