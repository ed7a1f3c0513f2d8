"""Measures vLLM the way `tandem bench cloud` measures the built-in engine.

Run by vLLM's own interpreter (`.venv-vllm`, scripts/install-vllm.sh), not imported by
Tandem: it reads the workload from stdin as JSON (the model folder, the dtype and the very
token ids the built-in engine was given) and writes its figures as one JSON object to the
file the workload names (vLLM's own logs go to stdout and stderr).
It imports nothing from Tandem, whose dependencies that venv does not have.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import Any


def main() -> None:
    spec = json.load(sys.stdin)
    started = time.perf_counter()
    import vllm
    from vllm import LLM, SamplingParams

    llm = LLM(model=spec["model"], dtype=spec["dtype"], block_size=spec["block_size"],
              max_num_seqs=spec["max_num_seqs"], max_model_len=spec["max_model_len"],
              enable_prefix_caching=True, seed=0)
    report: dict[str, Any] = {"name": "vllm", "version": vllm.__version__,
                              "dtype": spec["dtype"], "block_size": spec["block_size"],
                              "startup_s": round(time.perf_counter() - started, 1)}

    def generate(prompts: list[list[int]], **params: Any) -> tuple[float, list[Any]]:
        # Token ids only, as the built-in engine is measured (and vLLM fails detokenizing
        # the placeholder ids of prompt log-probabilities read from its prefix cache).
        sampling = SamplingParams(temperature=0.0, ignore_eos=True, detokenize=False, **params)
        began = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], sampling,
                               use_tqdm=False)
        return time.perf_counter() - began, outputs

    # Batch-1 decode as the built-in engine's bench times HF: (n - 1) tokens over the time
    # n tokens take beyond the first; best of the repeats.
    prompt, n = spec["decode_prompt"], spec["decode_tokens"]
    generate([prompt], max_tokens=2)  # warm-up (first-run compilation)
    runs = []
    for _ in range(spec["repeats"]):
        one, _ = generate([prompt], max_tokens=1)
        all_n, outputs = generate([prompt], max_tokens=n)
        runs.append((n - 1) / max(all_n - one, 1e-9))
    report["decode_tok_s_b1"] = round(max(runs), 2)
    report["decode_tok_s_b1_runs"] = [round(r, 2) for r in runs]
    report["greedy_tokens"] = list(outputs[0].outputs[0].token_ids)

    report["throughput_tok_s"], report["throughput_tok_s_runs"] = {}, {}
    for streams, prompts in spec["stream_prompts"].items():
        rates = []
        for _ in range(spec["repeats"]):
            elapsed, outputs = generate(prompts, max_tokens=spec["stream_tokens"])
            rates.append(sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed)
        report["throughput_tok_s"][streams] = round(max(rates), 2)
        report["throughput_tok_s_runs"][streams] = [round(r, 2) for r in rates]

    # Cold then cached, best of the repeats (the prefix cache emptied before each pair).
    cold, cached = [], []
    for _ in range(spec["repeats"]):
        llm.reset_prefix_cache()
        cold.append(generate([spec["ttft_cold"]], max_tokens=1)[0] * 1e3)
        cached.append(generate([spec["ttft_cached"]], max_tokens=1)[0] * 1e3)
    report["ttft_cold_ms"], report["ttft_cached_ms"] = round(min(cold), 1), round(min(cached), 1)
    report["ttft_cold_ms_runs"] = [round(t, 1) for t in cold]
    report["ttft_cached_ms_runs"] = [round(t, 1) for t in cached]

    # Verify: the cloud's log-probabilities of a k-token draft after a cached prefix, one
    # pass. Through its API (prompt_logprobs) vLLM skips reading the prefix cache and
    # recomputes the whole sequence; offline it can be told to read it.
    prefix, draft = spec["verify_prefix"], spec["verify_draft"]
    generate([prefix], max_tokens=1)  # the prefix is cached now
    generate([draft], max_tokens=1, prompt_logprobs=1)  # warm-up of the log-probability path
    verify = []
    for reads_cache in (False, True):
        extra = {"skip_reading_prefix_cache": False} if reads_cache else {}
        times = [generate([prefix + draft], max_tokens=1, prompt_logprobs=1, **extra)[0]
                 for _ in range(spec["repeats"])]
        verify.append(round(min(times) * 1e3, 1))
    report["verify_ms_api"], report["verify_ms"] = verify
    with open(spec["result_file"], "w") as out:
        json.dump(report, out)
    del llm  # shuts its engine processes down now, while the interpreter is whole
    gc.collect()


if __name__ == "__main__":
    main()
    # Skip the interpreter's teardown: once in a CI run, a C++ object of vLLM's process
    # ended it with std::terminate (SIGABRT) after the figures were written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
