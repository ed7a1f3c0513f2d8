"""Executes one scheduled step: turns the scheduler's decisions into flat tensors
(tokens, positions, KV slots, attention groups) and runs one batched forward.

Two runners behind one interface, chosen by a registry on the model's architecture:
the fast Llama-family forward over the paged KV cache, and a correct but slow
transformers fallback that recomputes each sequence's whole context every step.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import torch

from tandem.cloud.llama_model import (
    SMALL_QUERY, AttentionGroup, LlamaForward, PagedQueries, StepInput, supports_fast_path)
from tandem.cloud.scheduler import ScheduledSeq
from tandem.shared.log import log_event

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


class ModelRunner(Protocol):
    num_blocks: int

    def execute(self, scheduled: list[ScheduledSeq]) -> torch.Tensor:
        """fp32 logits [sum of num_logits, V], in the order of ``scheduled``."""
        ...

    def weight_bytes_per_token(self) -> int: ...


def kv_bytes_per_token(config: object, dtype: torch.dtype) -> int:
    heads = getattr(config, "num_attention_heads")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads  # type: ignore[attr-defined]
    element = torch.tensor([], dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element  # type: ignore[attr-defined]


def num_blocks_for_budget(config: object, dtype: torch.dtype, budget_bytes: int,
                          block_size: int) -> int:
    return max(1, budget_bytes // (kv_bytes_per_token(config, dtype) * block_size))


class PagedLlamaRunner:
    """The fast path: one fused forward per step over a paged KV cache."""

    def __init__(self, hf_model: PreTrainedModel, num_blocks: int, block_size: int) -> None:
        self.model = LlamaForward(hf_model)
        self.num_blocks = num_blocks
        self.block_size = block_size
        m = self.model
        shape = (m.num_layers, num_blocks * block_size, m.num_kv_heads, m.head_dim)
        self.k_cache = torch.zeros(shape, dtype=m.dtype)  # [layers, slots, Hkv, hd]
        self.v_cache = torch.zeros(shape, dtype=m.dtype)

    def weight_bytes_per_token(self) -> int:
        return self.model.weight_bytes_per_token()

    def execute(self, scheduled: list[ScheduledSeq]) -> torch.Tensor:
        return self.model.forward(self.prepare(scheduled), self.k_cache, self.v_cache)

    def _slots(self, blocks: list[int], start: int, stop: int) -> list[int]:
        bs = self.block_size
        return [blocks[p // bs] * bs + p % bs for p in range(start, stop)]

    def prepare(self, scheduled: list[ScheduledSeq]) -> StepInput:
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logit_rows: list[int] = []
        small: list[tuple[int, ScheduledSeq]] = []
        groups: list[AttentionGroup] = []
        for item in scheduled:
            offset = len(tokens)
            stop = item.start + item.num_tokens
            tokens += item.token_ids
            positions += range(item.start, stop)
            slots += self._slots(item.seq.blocks, item.start, stop)
            logit_rows += range(len(tokens) - item.num_logits, len(tokens))
            if item.num_tokens <= SMALL_QUERY:
                small.append((offset, item))
            else:
                groups.append(self._group([(offset, item)]))
        paged = None
        if small and self.model.native_attention:
            paged = self._paged(small)
        elif small:
            groups.append(self._group(small, covers_step=len(small) == len(scheduled)))
        return StepInput(torch.tensor(tokens), torch.tensor(positions), torch.tensor(slots),
                         groups, torch.tensor(logit_rows, dtype=torch.long), paged)

    def _paged(self, members: list[tuple[int, ScheduledSeq]]) -> PagedQueries:
        """Each query row's sequence (its block table) and key count, for the native
        kernel reading the cache in place."""
        rows: list[int] = []
        table_start: list[int] = []
        keys: list[int] = []
        tables: list[int] = []
        for offset, item in members:
            ctx = item.start + item.num_tokens
            rows += range(offset, offset + item.num_tokens)
            table_start += [len(tables)] * item.num_tokens
            keys += range(item.start + 1, ctx + 1)
            tables += item.seq.blocks[:-(-ctx // self.block_size)]
        return PagedQueries(*(torch.tensor(v, dtype=torch.long)
                              for v in (rows, table_start, keys, tables)), self.block_size)

    def _group(self, members: list[tuple[int, ScheduledSeq]],
               covers_step: bool = False) -> AttentionGroup:
        """Padded query/key layout for sequences attending in one SDPA call."""
        q_len = max(item.num_tokens for _, item in members)
        k_len = max(item.start + item.num_tokens for _, item in members)
        B = len(members)
        query_rows = torch.zeros(B, q_len, dtype=torch.long)
        query_valid = torch.zeros(B, q_len, dtype=torch.bool)
        key_slots = torch.zeros(B, k_len, dtype=torch.long)
        query_pos = torch.full((B, q_len), -1, dtype=torch.long)
        key_count = torch.zeros(B, 1, dtype=torch.long)
        for b, (offset, item) in enumerate(members):
            n, ctx = item.num_tokens, item.start + item.num_tokens
            query_rows[b, :n] = torch.arange(offset, offset + n)
            query_valid[b, :n] = True
            query_pos[b, :n] = torch.arange(item.start, ctx)
            key_slots[b, :ctx] = torch.tensor(self._slots(item.seq.blocks, 0, ctx))
            key_count[b] = ctx
        key_pos = torch.arange(k_len)
        # Causal within the sequence; padded queries see key 0 so SDPA stays finite.
        mask = (key_pos[None, None, :] <= query_pos[:, :, None].clamp(min=0)) & \
            (key_pos[None, None, :] < key_count[:, :, None])  # [B, Q, L]
        # The group covers the step's tokens in order when no query row is padding.
        covers_step = covers_step and bool(query_valid.all())
        return AttentionGroup(query_rows, query_valid, key_slots,
                              None if bool(mask.all()) else mask[:, None], covers_step)


class RecomputeHFRunner:
    """Fallback for architectures the fast path does not cover: each step runs the
    transformers model over every scheduled sequence's whole context (no KV reuse).
    Correct and slow; the block accounting still bounds memory and concurrency."""

    def __init__(self, hf_model: PreTrainedModel, num_blocks: int, block_size: int) -> None:
        self.hf_model = hf_model
        self.num_blocks = num_blocks

    def weight_bytes_per_token(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.hf_model.parameters())

    @torch.inference_mode()
    def execute(self, scheduled: list[ScheduledSeq]) -> torch.Tensor:
        rows = []
        for item in scheduled:
            if item.num_logits == 0:
                continue
            context = item.seq.tokens[:item.start + item.num_tokens]
            out = self.hf_model(input_ids=torch.tensor([context]), use_cache=False,
                                logits_to_keep=item.num_logits)
            rows.append(out.logits[0].float())
        vocab = self.hf_model.config.vocab_size
        return torch.cat(rows) if rows else torch.empty(0, vocab)


def build_runner(hf_model: PreTrainedModel, num_blocks: int, block_size: int,
                 context_window: int) -> ModelRunner:
    """The fast runner when the architecture allows it, else the fallback (logged)."""
    reason = supports_fast_path(hf_model.config, context_window)
    if reason is None:
        return PagedLlamaRunner(hf_model, num_blocks, block_size)
    log_event(logger, "cloud model runner: transformers fallback (slow)", reason=reason)
    return RecomputeHFRunner(hf_model, num_blocks, block_size)
