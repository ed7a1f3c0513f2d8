"""Sizing a flash runtime: how a DRAM budget becomes per-layer buffer rows, and the
window k (tokens whose neurons stay cached) that reads the least for that buffer,
chosen by simulating the runtime's eviction on calibration selections."""

from __future__ import annotations

import numpy as np


def capacity_for(model_bytes: int, ffn_bytes: int, budget_fraction: float, layers: int,
                 neurons: int, record: int) -> int:
    """Buffer rows per layer that a DRAM budget leaves after the resident weights."""
    resident = model_bytes - ffn_bytes
    capacity = (int(budget_fraction * model_bytes) - resident) // (layers * record)
    if capacity < 1:
        raise ValueError(f"a budget of {budget_fraction:.0%} of {model_bytes} B is below the "
                         f"resident {resident} B")
    return min(capacity, neurons)


WINDOW_CANDIDATES = (1, 2, 3, 4, 6, 8, 12, 16)


def simulated_misses(chosen: np.ndarray, capacity: int, window: int) -> int:
    """Neurons one layer would read for the token sequence ``chosen`` ([N, F] bool) with
    this capacity and window, evicting as WindowedFlashFFN does (stale rows first, then
    least recently used ones); evicted neurons stay out until read again."""
    last = np.full(chosen.shape[1], -(10**9))
    cached = np.zeros(chosen.shape[1], dtype=bool)
    misses = 0
    for t, sel in enumerate(chosen, start=1):  # t: the runtime's step counter
        if sel.sum() > capacity:  # the runtime keeps the best-scoring `capacity`; any subset
            sel = sel & (np.cumsum(sel) <= capacity)  # of that size reads the same count
        cached &= ~((last <= t - window) & ~sel)  # rows no token of the window used
        over = int((cached | sel).sum()) - capacity
        if over > 0:
            victims = np.flatnonzero(cached & ~sel)
            cached[victims[np.argsort(last[victims], kind="stable")[:over]]] = False
        misses += int((sel & ~cached).sum())
        cached |= sel
        last[sel] = t
    return misses


def choose_window(selections: np.ndarray, capacity: int) -> int:
    """The k with the fewest simulated reads on the calibration tokens (smallest on ties)."""
    reads = {k: sum(simulated_misses(layer, capacity, k) for layer in selections)
             for k in WINDOW_CANDIDATES}
    return min(reads, key=lambda k: (reads[k], k))
