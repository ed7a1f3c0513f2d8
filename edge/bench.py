"""The edge runtime's parallel slots measured: aggregate decode tok/s with 1, 2, 4, ...
concurrent streams on one llama.cpp backend, each stream's greedy tokens checked against
the same prompt decoded alone (`tandem bench edge --concurrency 1,2,4,8`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any


def text_prompts(ids: list[int], count: int) -> list[list[int]]:
    """``count`` prompts cut from ``ids`` at different offsets and lengths (12 to 75
    tokens), so concurrent streams prefill different amounts."""
    return [ids[17 * i: 17 * i + 12 + (i * 7) % 64] for i in range(count)]


async def _stream(backend: Any, prompt: list[int], tokens: int,
                  tenant: str) -> tuple[list[int], float]:
    """Greedy tokens after ``prompt`` and the time of the first one."""
    from tandem.shared.sampling import SamplingParams, TokenSampler
    from tandem.shared.tier_handler import TokenRequest

    out, first = [], 0.0
    request = TokenRequest(prompt, TokenSampler(SamplingParams(max_tokens=tokens)), tenant)
    async for item in backend.generate(request):
        first = first or time.perf_counter()
        out.append(item.token)
    return out, first


async def _concurrent(backend: Any, prompts: list[list[int]], tokens: int
                      ) -> tuple[list[list[int]], float]:
    """Every prompt at once, from an empty cache (a tenant of its own: slots reuse only
    their own tenant's prefixes, and a reused prefix is evaluated in other chunks, which
    llama.cpp rounds differently); (the streams' tokens, decode tok/s over all of them)."""
    tenant = f"bench-{time.monotonic_ns()}"
    started = time.perf_counter()
    results = await asyncio.gather(*(_stream(backend, p, tokens, tenant) for p in prompts))
    elapsed = time.perf_counter() - started
    # decode: the tokens after each stream's first, over the time after the last first
    last_first = max(first for _, first in results)
    decoded = sum(len(out) - 1 for out, _ in results)
    return [out for out, _ in results], decoded / max(started + elapsed - last_first, 1e-9)


def measure_concurrency(model_path: str, eval_ids: list[int], levels: list[int],
                        threads: int, tokens: int, repeats: int) -> list[dict[str, Any]]:
    """A row per concurrency: aggregate decode tok/s (best of ``repeats``) and whether
    every stream's greedy output equals its prompt decoded alone."""
    from tandem.edge.llama_cpp_backend import LlamaCppBackend

    prompts = text_prompts(eval_ids, max(levels))
    backend = LlamaCppBackend.open(model_path, slots=max(levels), context_window=1024,
                                   threads=threads, adaptive_threads=False)
    try:
        async def run() -> list[dict[str, Any]]:
            alone = [(await _concurrent(backend, [p], tokens))[0][0] for p in prompts]
            rows = []
            for level in levels:
                rates, identical = [], True
                for _ in range(repeats):
                    outputs, rate = await _concurrent(backend, prompts[:level], tokens)
                    rates.append(rate)
                    identical &= outputs == alone[:level]
                rows.append({"streams": level, "tok_s": round(max(rates), 2),
                             "tok_s_runs": [round(r, 2) for r in rates],
                             "identical": identical})
            return rows

        rows = asyncio.run(run())
    finally:
        backend.close()
    for row in rows:
        row["vs_one_stream"] = round(row["tok_s"] / rows[0]["tok_s"], 2)
    return rows
