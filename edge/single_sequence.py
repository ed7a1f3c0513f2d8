"""What both edge backends share: one model context holding one sequence, used by one
request at a time, reusing the KV of the longest common prefix with the previous call
(so a rejected draft is rolled back, never re-processed)."""

from __future__ import annotations

import asyncio
import threading
from abc import abstractmethod
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tandem.edge.backend import DraftResult, EdgeBackend
from tandem.shared.sampling import TokenSampler
from tandem.shared.tier_service import GeneratedToken


def reusable_prefix(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """Tokens of ``cached`` that ``tokens`` starts with, keeping the last token of
    ``tokens`` to re-run (its logits are needed)."""
    reuse, limit = 0, min(len(cached), len(tokens) - 1)
    while reuse < limit and cached[reuse] == tokens[reuse]:
        reuse += 1
    return reuse


class SingleSequenceBackend(EdgeBackend):
    """Generation and drafting over two model steps the subclass provides; model calls run
    on one worker thread so the event loop stays responsive."""

    def __init__(self, thread_name: str) -> None:
        self._lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)

    @abstractmethod
    def _eval_after_prefix(self, tokens: Sequence[int]) -> tuple[int, np.ndarray]:
        """Make the context hold ``tokens``; returns (reused prefix length, last logits [V])."""

    @abstractmethod
    def _eval_one(self, token: int) -> np.ndarray:
        """Append ``token``; returns its logits [V]."""

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def generate(self, prompt_ids: Sequence[int], sampler: TokenSampler,
                       session_id: str) -> AsyncIterator[GeneratedToken]:
        async with self._lock:
            _, logits = await self._run(self._eval_after_prefix, prompt_ids)
            while True:
                generated = GeneratedToken(*sampler.sample_with_entropy(logits))
                yield generated
                logits = await self._run(self._eval_one, generated.token)

    async def draft(self, tokens: Sequence[int], num_tokens: int, sampler: TokenSampler,
                    stop_ids: frozenset[int], want_distributions: bool = False) -> DraftResult:
        cancelled = threading.Event()
        async with self._lock:
            try:
                return await self._run(self.draft_sync, tokens, num_tokens, sampler, stop_ids,
                                       want_distributions, cancelled)
            except asyncio.CancelledError:
                # The model thread finishes its current token, not the whole draft: the
                # next call waits for that thread (e.g. after a pipelined draft the
                # router no longer needs).
                cancelled.set()
                raise

    def draft_sync(self, tokens: Sequence[int], num_tokens: int, sampler: TokenSampler,
                   stop_ids: frozenset[int], want_distributions: bool = False,
                   cancelled: threading.Event | None = None) -> DraftResult:
        reuse, logits = self._eval_after_prefix(tokens)
        computed = len(tokens) - reuse
        drafted: list[int] = []
        probs: list[float] = []
        distributions: list[np.ndarray] = []
        for i in range(num_tokens):
            token, _, prob, dist = sampler.sample_with_distribution(logits)
            drafted.append(token)
            probs.append(prob)
            if want_distributions and dist is not None:
                distributions.append(dist.astype(np.float32))
            if token in stop_ids or i == num_tokens - 1 or (cancelled and cancelled.is_set()):
                break
            logits = self._eval_one(token)
            computed += 1
        return DraftResult(drafted, probs, reuse, computed, distributions or None)
