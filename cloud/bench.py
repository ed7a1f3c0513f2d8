"""`tandem bench cloud`: the cloud engine against the memory-bandwidth bound and HF
`generate`, side by side in one process (JSON on stdout, a table on stderr).

Measured in one run: machine read bandwidth, batch-1 decode of the engine and of HF
`generate` (same model, dtype, prompt), aggregate throughput at several concurrencies,
TTFT of a long prompt cold and with its prefix cached, Verify of a draft, KV cache waste,
and the native matmul kernel against oneDNN on the same weights; with ``--peer vllm``,
vLLM's CPU build on the same weights, token ids and threads (cloud/peers/vllm.py), and the
ratios between the two.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any


HELP = "Cloud engine: decode vs bandwidth bound and HF, throughput, prefix-cache TTFT, KV waste."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="Model alias/path (default: the cloud's).")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--threads", type=int, default=0, help="Torch threads; 0 = every core.")
    p.add_argument("--decode-tokens", type=int, default=64, help="Tokens for batch-1 decode.")
    p.add_argument("--stream-tokens", type=int, default=64,
                   help="Tokens per stream in the throughput runs.")
    p.add_argument("--concurrency", default="1,4,16,32", help="Comma-separated stream counts.")
    p.add_argument("--prefix-tokens", type=int, default=1024, help="Long prompt for TTFT.")
    p.add_argument("--repeats", type=int, default=3,
                   help="Repeats of the b1 and throughput measurements (the best run counts).")
    p.add_argument("--block-size", type=int, default=8, help="KV cache block size.")
    p.add_argument("--openmp-spin-count", type=int, default=None,
                   help="As the cloud service's option (default: the service's default).")
    p.add_argument("--peer", choices=("vllm",), default=None,
                   help="Also measure this engine on the same weights and workload, after "
                        "the built-in one (vLLM: scripts/install-vllm.sh).")
    p.add_argument("--rounds", type=int, default=1,
                   help="The built-in engine's figures (then the peer's) this many times in "
                        "turn; each figure is the best of its rounds, per engine, and each "
                        "round's ratios are kept: on a machine whose speed drifts, a slow "
                        "phase then hits both engines, not the one that ran during it.")
    p.add_argument("--peer-python", default=None,
                   help="The peer's interpreter (default: $TANDEM_VLLM_PYTHON or "
                        ".venv-vllm/bin/python).")

VERIFY_PREFIX_TOKENS = 200
VERIFY_DRAFT_TOKENS = 8


def measure_bandwidth_gbps(repeats: int = 5) -> float:
    """Machine read bandwidth: the best of two ways to stream 512 MiB of fp32 through every
    core (a torch sum, and a one-row product with a [2^17, 1024] matrix through the packed
    kernel the engine uses), best of ``repeats`` each. The bound is what the machine can
    read, whichever kernel reads it fastest."""
    import torch

    from tandem.shared.linear import Linear

    data = torch.ones(2**17, 2**10, dtype=torch.float32)
    row = torch.ones(1, 2**10, dtype=torch.float32)
    product = Linear(data)
    readers = [data.sum, lambda: product(row)]
    best = float("inf")
    with torch.inference_mode():
        for read in readers:
            read()
            for _ in range(repeats):
                started = time.perf_counter()
                read()
                best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best / 1e9


def matmul_only_tok_s(forward: Any, batch: int = 1, steps: int = 10) -> float:
    """Tokens/s of the weight matmuls of a decode step of ``batch`` sequences and nothing
    else (the engine's own matmul kernels on its weights): what the rest of the step
    (attention, norms, sampling, scheduling) costs is the gap to the engine's rate."""
    import torch

    matmuls = forward.matmuls()
    inputs = {m.in_features: torch.randn(batch, m.in_features, dtype=forward.dtype)
              for m in matmuls}
    with torch.inference_mode():
        started = time.perf_counter()
        for _ in range(steps):
            for m in matmuls:
                m(inputs[m.in_features])  # [batch, out]
        return batch * steps / (time.perf_counter() - started)


def matmul_kernels_ms(model: Any, forward: Any, rows: tuple[int, ...] = (1, 9, 32, 512),
                     repeats: int = 3) -> dict[str, Any] | None:
    """Milliseconds for all of a step's weight matmuls at each row count on the engine's
    native kernel and on oneDNN (packed from the same weights), alternating, best of
    ``repeats``; None where the engine does not run the native kernel."""
    import torch

    from tandem.cloud.llama_model import LlamaForward

    if forward.lm_head.kernel != "native":
        return None
    kernels = {"native": forward.matmuls(), "onednn": LlamaForward(model, False).matmuls()}
    best: dict[str, list[float]] = {name: [] for name in kernels}
    with torch.inference_mode():
        for n in rows:
            inputs = {m.in_features: torch.randn(n, m.in_features) for m in kernels["native"]}
            times: dict[str, list[float]] = {name: [] for name in kernels}
            for repeat in range(repeats):
                order = list(kernels) if repeat % 2 == 0 else list(kernels)[::-1]
                for name in order:
                    started = time.perf_counter()
                    for m in kernels[name]:
                        m(inputs[m.in_features])
                    times[name].append(time.perf_counter() - started)
            for name in kernels:
                best[name].append(round(min(times[name]) * 1e3, 1))
    return {"rows": list(rows), "native_ms": best["native"], "onednn_ms": best["onednn"]}


def hf_decode_tok_s(model: Any, prompt: list[int], n: int) -> float:
    """HF `generate` decode rate: (n - 1) tokens over the time n tokens take beyond 1."""
    import torch

    ids = torch.tensor([prompt])

    def timed(tokens: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        return time.perf_counter() - started

    one = timed(1)
    return (n - 1) / max(timed(n) - one, 1e-9)


async def stream(engine: Any, prompt: list[int], n: int, tenant: str = "",
                 tokens: list[int] | None = None) -> list[float]:
    """Generate ``n`` greedy tokens (appended to ``tokens`` if given); the arrival time of
    each."""
    from tandem.shared.sampling import SamplingParams, TokenSampler
    from tandem.shared.tier_handler import TokenRequest

    times = []
    gen = engine.generate(TokenRequest(prompt, TokenSampler(SamplingParams(max_tokens=n)),
                                       tenant))
    async for token in gen:
        times.append(time.perf_counter())
        if tokens is not None:
            tokens.append(token.token)
    return times


async def engine_decode_tok_s(engine: Any, prompt: list[int], n: int) -> float:
    times = await stream(engine, prompt, n)
    return (len(times) - 1) / (times[-1] - times[0])


async def throughput(engine: Any, prompts: list[list[int]], n: int) -> tuple[float, float]:
    """Aggregate output tok/s of concurrent streams, and mean KV waste while running."""
    waste: list[float] = []
    done = asyncio.Event()

    async def sample_waste() -> None:
        while not done.is_set():
            if engine.scheduler.running:
                waste.append(engine.scheduler.kv_waste())
            await asyncio.sleep(0.02)

    sampler = asyncio.ensure_future(sample_waste())
    started = time.perf_counter()
    results = await asyncio.gather(*(stream(engine, p, n) for p in prompts))
    elapsed = time.perf_counter() - started
    done.set()
    await sampler
    return sum(len(r) for r in results) / elapsed, sum(waste) / max(len(waste), 1)


async def ttft_ms(engine: Any, prompt: list[int], tenant: str) -> float:
    started = time.perf_counter()
    times = await stream(engine, prompt, 1, tenant)
    return (times[0] - started) * 1e3


def text_tokens(tokenizer: Any, count: int, seed: int) -> list[int]:
    """``count`` tokens of varied English-like text (deterministic per seed)."""
    words = ("river mountain city light engine garden signal market winter paper bridge "
             "network window silver music forest number ocean machine history").split()
    text, i = [], seed
    while len(tokenizer.encode(" ".join(text))) < count:
        i = (i * 1103515245 + 12345) % 2**31
        text.append(words[i % len(words)])
    return tokenizer.encode(" ".join(text))[:count]


async def verify_ms(engine: Any, prefix: list[int], repeats: int) -> tuple[dict[str, Any],
                                                                       list[int]]:
    """Verify of a k-token draft after ``prefix``: a session's next round (its KV kept, what
    speculative decoding pays per round) and a new session's first round over the tenant's
    cached prefix; best of ``repeats``. The drafts are the engine's own greedy continuation,
    as in a round where every token is accepted. Returns the figures and the first draft."""
    from tandem.shared.sampling import SamplingParams

    k, greedy = VERIFY_DRAFT_TOKENS, SamplingParams(max_tokens=1)
    tenant = f"bench-verify-{time.monotonic_ns()}"
    continuation: list[int] = []
    await stream(engine, prefix, 2 * k + 1, tenant, continuation)  # caches the prefix too
    first_round, next_round = [], []
    for r in range(repeats):
        session = f"verify-{r}"
        started = time.perf_counter()
        await engine.verify(tenant, session, prefix, continuation[:k], greedy)
        first_round.append(time.perf_counter() - started)
        started = time.perf_counter()
        await engine.verify(tenant, session, prefix + continuation[:k + 1],
                            continuation[k + 1:], greedy)
        next_round.append(time.perf_counter() - started)
        engine.end_session(tenant, session)
    figures = {"verify_ms": round(min(next_round) * 1e3, 1),
               "verify_ms_new_session": round(min(first_round) * 1e3, 1),
               "verify_draft_tokens": k, "verify_prefix_tokens": len(prefix)}
    return figures, continuation[:k]


async def run_b1_side_by_side(args: argparse.Namespace, engine: Any, model: Any,
                              prompt: list[int], report: dict[str, Any]) -> None:
    """Bandwidth, engine and HF batch-1 decode, interleaved so that load from other
    processes hits all three alike; each keeps its best run (least disturbed)."""
    bandwidth, matmuls, ours, theirs = [], [], [], []
    for _ in range(args.repeats):
        bandwidth.append(measure_bandwidth_gbps())
        if hasattr(engine.runner, "model"):  # the fast runner's LlamaForward
            matmuls.append(matmul_only_tok_s(engine.runner.model))
        ours.append(await engine_decode_tok_s(engine, prompt, args.decode_tokens))
        theirs.append(hf_decode_tok_s(model, prompt, args.decode_tokens))
    report["bandwidth_gbps"] = round(max(bandwidth), 2)
    report["bandwidth_gbps_runs"] = [round(b, 2) for b in bandwidth]
    report["bound_tok_s"] = round(report["bandwidth_gbps"] * 1e9
                                  / report["weight_bytes_per_token"], 2)
    if matmuls:
        report["matmul_only_tok_s_b1"] = round(max(matmuls), 2)
        report["matmul_only_gbps"] = round(max(matmuls) * report["weight_bytes_per_token"]
                                           / 1e9, 2)
    report["decode_tok_s_b1"] = round(max(ours), 2)
    report["decode_tok_s_b1_runs"] = [round(r, 2) for r in ours]
    report["hf_decode_tok_s_b1"] = round(max(theirs), 2)
    report["hf_decode_tok_s_b1_runs"] = [round(r, 2) for r in theirs]


async def run_engine_parts(args: argparse.Namespace, engine: Any, model: Any, tokenizer: Any,
                           prompt: list[int], report: dict[str, Any]) -> dict[str, Any]:
    """The built-in engine's figures into ``report``; returns the workload (token ids) for a
    peer to run the same."""
    await run_b1_side_by_side(args, engine, model, prompt, report)
    greedy: list[int] = []
    await stream(engine, prompt, args.decode_tokens, tokens=greedy)
    report["throughput_tok_s"] = {}
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    if hasattr(engine.runner, "model"):
        top = max(concurrencies)
        report[f"matmul_only_tok_s_b{top}"] = round(matmul_only_tok_s(engine.runner.model, top), 2)
        kernels = matmul_kernels_ms(model, engine.runner.model)
        if kernels is not None:
            report["matmul_kernels"] = kernels
    report["throughput_tok_s_runs"] = {}
    stream_prompts = {str(c): [text_tokens(tokenizer, 24, seed=100 + i) for i in range(c)]
                      for c in concurrencies}
    for c in concurrencies:
        # Best of `repeats`, as the b1 figures it is compared with (least disturbed).
        prompts = stream_prompts[str(c)]
        runs = [await throughput(engine, prompts, args.stream_tokens) for _ in range(args.repeats)]
        report["throughput_tok_s"][str(c)] = round(max(rate for rate, _ in runs), 2)
        report["throughput_tok_s_runs"][str(c)] = [round(rate, 2) for rate, _ in runs]
        waste = max(runs)[1]  # of the best run of the largest concurrency
        report["kv_waste_pct"] = round(100 * waste, 2)
    long_prompt = text_tokens(tokenizer, args.prefix_tokens, seed=7)
    question = text_tokens(tokenizer, 24, seed=8)
    other = text_tokens(tokenizer, 24, seed=9)
    cold, cached = [], []  # best of `repeats`, as the rates: one sample is the machine's
    for _ in range(args.repeats):  # phase as much as the engine's
        tenant = f"bench-{time.monotonic_ns()}"  # a prefix nobody has cached
        cold.append(await ttft_ms(engine, long_prompt + question, tenant))
        cached.append(await ttft_ms(engine, long_prompt + other, tenant))
    report["ttft_cold_ms"], report["ttft_cached_ms"] = round(min(cold), 1), round(min(cached), 1)
    report["ttft_cold_ms_runs"] = [round(t, 1) for t in cold]
    report["ttft_cached_ms_runs"] = [round(t, 1) for t in cached]
    verify_prefix = text_tokens(tokenizer, VERIFY_PREFIX_TOKENS, seed=11)
    figures, draft = await verify_ms(engine, verify_prefix, args.repeats)
    report |= figures
    return {"decode_prompt": prompt, "decode_tokens": args.decode_tokens, "greedy": greedy,
            "stream_prompts": stream_prompts, "stream_tokens": args.stream_tokens,
            "repeats": args.repeats, "ttft_cold": long_prompt + question,
            "ttft_cached": long_prompt + other, "verify_prefix": verify_prefix,
            "verify_draft": draft}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tandem.cloud.config import CloudConfig
    from tandem.shared.openmp import set_openmp_wait

    spin = (CloudConfig.openmp_spin_count if args.openmp_spin_count is None
            else args.openmp_spin_count)
    set_openmp_wait(spin)  # before torch loads, as `tandem serve cloud` does
    import torch

    from tandem.shared.model_loader import load_causal_lm
    from tandem.cloud.server import build_engine
    from tandem.shared.memory import freeze_startup_objects
    from tandem.shared.models import DEFAULT_MODEL, load_tokenizer, resolve_model

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    source = resolve_model(args.model or DEFAULT_MODEL)
    peer_python = _peer_python(args)  # a missing peer fails now, not after the built-in runs
    tokenizer = load_tokenizer(source)
    model = load_causal_lm(source, args.dtype)
    config = CloudConfig(model=str(args.model or DEFAULT_MODEL), dtype=args.dtype,
                         max_num_seqs=max(int(x) for x in args.concurrency.split(",")),
                         block_size=args.block_size)
    engine = build_engine(config, model, stop_token_ids=[])
    freeze_startup_objects()  # as `tandem serve cloud` does before serving
    prompt = text_tokens(tokenizer, 32, seed=1)
    report: dict[str, Any] = {"model": source.name, "dtype": args.dtype,
                              "block_size": args.block_size,
                              "threads": torch.get_num_threads(),
                              "openmp": {k: os.environ.get(k, "") for k in
                                         ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
                              "runner": type(engine.runner).__name__}
    if hasattr(engine.runner, "model"):
        report["matmul_kernel"] = engine.runner.model.lm_head.kernel
    report["weight_bytes_per_token"] = engine.runner.weight_bytes_per_token()
    try:
        rounds = asyncio.run(run_rounds(args, engine, model, tokenizer, prompt, report,
                                        peer_python, source))
    finally:
        engine.close()
    report |= best_of([ours for ours, _ in rounds])
    add_ratios(report)
    if args.peer:
        report["peer"] = best_of([peer for _, peer in rounds])
        report["peer"]["greedy_identical"] = all(p["greedy_identical"] for _, p in rounds)
        report["peer"]["b1_fraction_of_bound"] = round(
            report["peer"]["decode_tok_s_b1"] / report["bound_tok_s"], 3)
        report["vs_peer"] = peer_ratios(report, report["peer"])
    if args.rounds > 1:
        report["rounds"] = [{"decode_tok_s_b1": ours["decode_tok_s_b1"],
                             "verify_vs_step": ours["verify_vs_step"],
                             **({"vs_peer": peer_ratios(ours, peer)} if peer else {})}
                            for ours, peer in rounds]
    return report


async def run_rounds(args: argparse.Namespace, engine: Any, model: Any, tokenizer: Any,
                     prompt: list[int], base: dict[str, Any], peer_python: Any, source: Any
                     ) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each round: the built-in engine's figures, then (while it idles: the two never share
    the cores) the peer's on the same token ids."""
    import torch

    rounds = []
    for _ in range(args.rounds):
        ours = dict(base, load_average_before=round(os.getloadavg()[0], 2))
        workload = await run_engine_parts(args, engine, model, tokenizer, prompt, ours)
        ours["load_average_after"] = round(os.getloadavg()[0], 2)
        add_ratios(ours)
        peer = (run_peer(peer_python, args.dtype, source, workload, torch.get_num_threads())
                if args.peer else None)
        rounds.append((ours, peer))
    return rounds


def best_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's figures over rounds: each rate its highest, each latency (``_ms``) and
    the KV waste its lowest, the runs behind them joined; the rest from the first round.
    Figures derived from others (bound, ratios) are computed again by the caller."""
    def best(key: str, values: list[Any]) -> Any:
        if key == "matmul_kernels":  # timed once a round, alternating: the first round's
            return values[0]
        if isinstance(values[0], dict):
            return {k: best(key, [v[k] for v in values]) for k in values[0]}
        if isinstance(values[0], list):
            return [x for v in values for x in v]
        if isinstance(values[0], bool) or not isinstance(values[0], (int, float)):
            return values[0]
        if key.endswith("_ms") or key == "kv_waste_pct":
            return min(values)
        if "tok_s" in key or "gbps" in key:
            return max(values)
        return values[0]

    merged = {key: best(key, [r[key] for r in rounds]) for key in rounds[0]}
    if "bandwidth_gbps" in merged:
        merged["bound_tok_s"] = round(merged["bandwidth_gbps"] * 1e9
                                      / merged["weight_bytes_per_token"], 2)
    return merged


def _peer_python(args: argparse.Namespace) -> Any:
    if not args.peer:
        return None
    from tandem.cloud.peers import vllm_peer as vllm

    return vllm.peer_python(args.peer_python)


def run_peer(python: Any, dtype: str, source: Any, workload: dict[str, Any],
             threads: int) -> dict[str, Any]:
    """vLLM on ``workload`` (the token ids the built-in engine ran), its greedy tokens
    compared with the built-in engine's, and its batch-1 decode against the same bound."""
    from tandem.cloud.peers import vllm_peer as vllm

    greedy = workload.pop("greedy")
    longest = max(len(workload["ttft_cold"]), len(workload["ttft_cached"]),
                  len(workload["verify_prefix"]) + len(workload["verify_draft"]))
    generated = max(workload["decode_tokens"], workload["stream_tokens"])
    workload |= {"model": str(vllm.model_folder(source)), "dtype": dtype,
                 "block_size": vllm.BLOCK_SIZE, "max_model_len": longest + generated + 1,
                 "max_num_seqs": max(len(p) for p in workload["stream_prompts"].values())}
    peer = vllm.measure(python, workload, threads)
    peer["greedy_identical"] = peer.pop("greedy_tokens") == greedy
    return peer


def peer_ratios(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """Built-in / peer, oriented so that above 1 means the built-in engine is ahead: rates
    divided, latencies inverted."""
    def faster(rate: float, other: float) -> float:
        return round(rate / other, 2)

    ratios = {"decode_b1": faster(ours["decode_tok_s_b1"], peer["decode_tok_s_b1"]),
              "throughput": {c: faster(ours["throughput_tok_s"][c], rate)
                             for c, rate in peer["throughput_tok_s"].items()
                             if c in ours["throughput_tok_s"]}}
    for latency in ("ttft_cold_ms", "ttft_cached_ms", "verify_ms"):
        ratios[latency.removesuffix("_ms")] = faster(peer[latency], ours[latency])
    return ratios


def add_ratios(report: dict[str, Any]) -> None:
    b1 = report["decode_tok_s_b1"]
    report["b1_fraction_of_bound"] = round(b1 / report["bound_tok_s"], 3)
    report["b1_vs_hf"] = round(b1 / report["hf_decode_tok_s_b1"], 2)
    top = max(report["throughput_tok_s"], key=int)
    report["max_concurrency_vs_b1"] = round(report["throughput_tok_s"][top] / b1, 2)
    if f"matmul_only_tok_s_b{top}" in report:  # what the kernels allow for that ratio
        report["matmul_only_max_concurrency_vs_b1"] = round(
            report[f"matmul_only_tok_s_b{top}"] / report["matmul_only_tok_s_b1"], 2)
    report["ttft_cached_speedup"] = round(report["ttft_cold_ms"]
                                          / max(report["ttft_cached_ms"], 1e-3), 1)
    report["step_ms_b1"] = round(1e3 / b1, 2)
    report["verify_vs_step"] = round(report["verify_ms"] / report["step_ms_b1"], 2)


def table(report: dict[str, Any]) -> str:
    rows = [(k, v) for k, v in report.items() if not isinstance(v, dict)]
    rows += [(f"throughput_tok_s[{c}]", v) for c, v in report["throughput_tok_s"].items()]
    if "matmul_kernels" in report:
        k = report["matmul_kernels"]
        rows += [(f"matmul_ms[{n} rows] native / onednn", f"{a} / {b}")
                 for n, a, b in zip(k["rows"], k["native_ms"], k["onednn_ms"])]
    text = _aligned(rows)
    if "peer" in report:
        text += "\n\n" + peer_table(report)
    return text


def peer_table(report: dict[str, Any]) -> str:
    """The two engines side by side with the built-in/peer ratio (above 1: built-in ahead)."""
    peer, ratios = report["peer"], report["vs_peer"]
    rows = [("figure", "built-in", peer["name"], "ratio"),
            ("decode_tok_s_b1", report["decode_tok_s_b1"], peer["decode_tok_s_b1"],
             ratios["decode_b1"])]
    rows += [(f"throughput_tok_s[{c}]", report["throughput_tok_s"][c],
              peer["throughput_tok_s"][c], r) for c, r in ratios["throughput"].items()]
    rows += [(f"{name}_ms", report[f"{name}_ms"], peer[f"{name}_ms"], ratios[name])
             for name in ("ttft_cold", "ttft_cached", "verify")]
    width = [max(len(str(row[i])) for row in rows) for i in range(4)]
    return "\n".join("  ".join(f"{str(v):<{width[i]}}" for i, v in enumerate(row))
                     for row in rows)


def _aligned(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
