"""The cloud engine: runs the model one forward at a time on a dedicated thread, for
streaming generation and for speculative verification of whole drafts.

This is the straightforward engine of the foundation; continuous batching and the paged
KV cache replace it behind the same two entry points (`generate`, `verify`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tandem.cloud.sessions import SessionStore
from tandem.shared.errors import InvalidArgument
from tandem.shared.sampling import SamplingParams, TokenSampler
from tandem.shared.tier_service import GeneratedToken

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class VerifyResult:
    accepted: int
    next_token: int
    cached_tokens: int
    computed_tokens: int


def new_kv_cache() -> Any:
    from transformers import DynamicCache

    return DynamicCache()


def truncate_kv(cache: Any, length: int) -> None:
    """Keep the KV of the first ``length`` positions (transformers crops by a negative count)."""
    excess = cache.get_seq_length() - length
    if excess > 0:
        cache.crop(-excess)


class CloudEngine:
    def __init__(self, model: PreTrainedModel, sessions: SessionStore) -> None:
        self.model = model
        self.sessions = sessions
        # One thread: forwards run one at a time and each uses every torch thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud-model")

    @torch.inference_mode()
    def _forward(self, cache: Any, input_ids: Sequence[int], keep: int) -> np.ndarray:
        """Append ``input_ids`` to ``cache``; logits of the last ``keep`` positions.

        # input: [1, S] -> logits: [keep, V] (float32, numpy)
        """
        ids = torch.tensor([list(input_ids)], dtype=torch.long)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True,
                         logits_to_keep=keep)
        return out.logits[0].float().numpy()

    async def _run(self, cache: Any, input_ids: Sequence[int], keep: int) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._forward, cache, input_ids, keep)

    async def generate(self, prompt_ids: Sequence[int], sampler: TokenSampler,
                       session_id: str) -> AsyncIterator[GeneratedToken]:
        """Prefill, then decode one token per forward until the consumer stops."""
        cache = new_kv_cache()  # freed when the consumer closes this generator
        logits = await self._run(cache, prompt_ids, 1)
        while True:
            token, logprob, _ = sampler.sample(logits[-1])
            yield GeneratedToken(token, logprob)
            logits = await self._run(cache, [token], 1)

    async def verify(self, tenant: str, session_id: str, tokens: Sequence[int],
                     draft: Sequence[int], sampling: SamplingParams) -> VerifyResult:
        """Score ``draft`` after ``tokens`` in one forward, reusing the session's KV.

        Greedy: drafts are accepted while they equal the target's argmax. Sampling
        (target sampling, lossless without draft probabilities): the target samples each
        position and a draft is accepted while it equals that sample.
        """
        entry = self.sessions.acquire(tenant, session_id)
        async with entry.lock:
            # Reuse the longest cached prefix, but always recompute the last context token:
            # its logits score the first draft token.
            reuse = min(_common_prefix(entry.tokens, tokens), len(tokens) - 1)
            truncate_kv(entry.cache, reuse)
            entry.tokens = list(tokens[:reuse])
            feed = list(tokens[reuse:]) + list(draft)
            logits = await self._run(entry.cache, feed, len(draft) + 1)  # [k+1, V]
            sampler = TokenSampler(sampling)
            targets = [sampler.sample(row)[0] for row in logits]
            accepted = 0
            while accepted < len(draft) and draft[accepted] == targets[accepted]:
                accepted += 1
            # Roll back the KV of rejected drafts; keep the accepted ones for the next round.
            entry.tokens = list(tokens) + list(draft[:accepted])
            truncate_kv(entry.cache, len(entry.tokens))
            self.sessions.evict(keep=(tenant, session_id))
            return VerifyResult(accepted, targets[accepted], reuse, len(feed))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def validate_verify(tokens: Sequence[int], draft: Sequence[int], draft_probs: Sequence[float],
                    session_id: str, vocab_size: int, context_window: int,
                    max_draft: int = 64) -> None:
    """Checks of a Verify request before any model work; raises InvalidArgument."""
    if not session_id:
        raise InvalidArgument("session_id: required for Verify")
    if not tokens:
        raise InvalidArgument("tokens: must not be empty")
    if len(draft) > max_draft:
        raise InvalidArgument(f"draft_tokens: at most {max_draft}, got {len(draft)}")
    if draft_probs:
        raise InvalidArgument(
            "draft_probs: residual rejection sampling is not supported yet; omit draft_probs "
            "(greedy, or target sampling when temperature > 0)")
    if any(not 0 <= t < vocab_size for t in list(tokens) + list(draft)):
        raise InvalidArgument(f"tokens: ids must be in [0, {vocab_size})")
    if len(tokens) + len(draft) + 1 > context_window:
        raise InvalidArgument(f"tokens: sequence exceeds the context window of {context_window}")
