"""Perplexity of edge models on the text that ships in tandem/edge/data (the same text for
every format, so the numbers compare)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tandem.edge.torch_model import LlamaRuntime

DATA_DIR = Path(__file__).parents[1] / "data"  # edge/data, shipped with the runtime


def shipped_text(name: str) -> str:
    """``calibration`` or ``evaluation`` text (written for this project)."""
    path = DATA_DIR / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no shipped text {name!r} in {DATA_DIR}")
    return path.read_text()


def token_windows(ids: Sequence[int], window: int, limit: int | None = None) -> list[list[int]]:
    """Consecutive non-overlapping windows of ``window`` tokens (the first ``limit`` tokens)."""
    ids = list(ids[:limit] if limit else ids)
    return [ids[i:i + window] for i in range(0, len(ids) - 1, window) if len(ids[i:i + window]) > 1]


def runtime_perplexity(runtime: LlamaRuntime, windows: list[list[int]]) -> float:
    """exp(mean next-token NLL) over the windows, each evaluated from an empty cache."""
    nll, count = 0.0, 0
    for window in windows:
        runtime.truncate(0)
        logits = runtime.forward(window, last_only=False)  # [T, V]
        logprobs = torch.log_softmax(logits[:-1].double(), dim=-1)
        targets = torch.tensor(window[1:])
        nll -= logprobs.gather(1, targets[:, None]).sum().item()
        count += len(window) - 1
    runtime.truncate(0)
    return math.exp(nll / count)


def gguf_perplexity(model_path: str, windows: list[list[int]], threads: int) -> float:
    """The same measure for a GGUF through llama.cpp (logits for every position)."""
    from llama_cpp import Llama

    longest = max(len(w) for w in windows)
    llm = Llama(model_path=model_path, n_ctx=max(longest, 64), n_threads=threads,
                n_threads_batch=threads, logits_all=True, verbose=False)
    try:
        nll, count = 0.0, 0
        for window in windows:
            llm.reset()
            llm.eval(window)
            logits = np.asarray(llm.scores[: len(window) - 1], dtype=np.float64)  # [T-1, V]
            shifted = logits - logits.max(axis=1, keepdims=True)
            logprobs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            nll -= logprobs[np.arange(len(window) - 1), window[1:]].sum()
            count += len(window) - 1
    finally:
        llm.close()
    return math.exp(nll / count)
