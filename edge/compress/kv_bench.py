"""`tandem bench edge --kv-budget 0.5,0.2`: perplexity of a long text with the KV cache
held to a share of the sequence, by H2O and by keeping only the recent window of the same
size, against the full cache.

The long text is the shipped evaluation text continued by the model itself to the length
asked for (sampled at temperature 1 with a fixed seed; every row of a run reads the same
tokens). Each row feeds the text one token at a time, as decoding does: at every
step the cache holds ``budget`` x the tokens seen so far, and each token is predicted from
what the cache kept."""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm import tqdm

from tandem.edge.kv_eviction import KVEviction
from tandem.edge.torch_model import LlamaRuntime

SEED = 0


def long_text(runtime: LlamaRuntime, seed_ids: list[int], tokens: int) -> list[int]:
    """``seed_ids`` continued by sampling from ``runtime`` to ``tokens`` tokens."""
    generator = torch.Generator().manual_seed(SEED)
    runtime.set_kv_eviction(None)
    ids = list(seed_ids[:tokens])
    logits = runtime.forward(ids)
    with tqdm(total=tokens - len(ids), desc="long text", unit="tok") as bar:
        while len(ids) < tokens:
            probs = torch.softmax(logits[-1].double(), dim=-1)
            ids.append(int(torch.multinomial(probs, 1, generator=generator)))
            logits = runtime.forward(ids[-1:])
            bar.update(1)
    runtime.truncate(0)
    return ids


def streamed_perplexity(runtime: LlamaRuntime, ids: list[int],
                        eviction: KVEviction | None, desc: str = "") -> float:
    """exp(mean NLL) of ``ids[1:]``, feeding one token at a time under ``eviction``."""
    runtime.set_kv_eviction(eviction)
    nll = 0.0
    try:
        for t in tqdm(range(len(ids) - 1), desc=desc or "perplexity", unit="tok"):
            logits = runtime.forward([ids[t]])[-1].double()
            nll -= float(torch.log_softmax(logits, dim=-1)[ids[t + 1]])
    finally:
        runtime.set_kv_eviction(None)
    return math.exp(nll / (len(ids) - 1))


def full_perplexity(runtime: LlamaRuntime, ids: list[int], chunk: int = 256) -> float:
    """The same figure without eviction (chunked: identical to one token at a time)."""
    runtime.set_kv_eviction(None)
    nll, seen = 0.0, 0
    for begin in range(0, len(ids) - 1, chunk):
        piece = ids[begin:begin + chunk + 1]
        logits = runtime.forward(piece[:-1], last_only=False).double()
        nll -= float(torch.log_softmax(logits, dim=-1).gather(
            1, torch.tensor(piece[1:])[:, None]).sum())
        seen += len(piece) - 1
    runtime.truncate(0)
    return math.exp(nll / seen)


def kv_eviction_report(runtime: LlamaRuntime, ids: list[int], budgets: list[float],
                       recent: float = 0.5) -> dict[str, Any]:
    """``"kv_eviction": {"full_ppl", "tokens", "rows": [{"budget", "method", "ppl"}]}``."""
    rows = []
    for budget in budgets:
        for method in ("h2o", "recent"):
            eviction = KVEviction(budget=budget, recent=recent, method=method)
            ppl = streamed_perplexity(runtime, ids, eviction, f"{method} {budget:g}")
            rows.append({"budget": budget, "method": method, "ppl": round(ppl, 4)})
    full = full_perplexity(runtime, ids)
    for row in rows:
        row["vs_full"] = round(row["ppl"] / full - 1, 4)
    return {"tokens": len(ids), "recent_share": recent, "full_ppl": round(full, 4),
            "rows": rows}
