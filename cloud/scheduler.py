"""Iteration-level scheduling (no torch): each step decides which sequences run and how
many of their tokens, allocating KV blocks, reusing cached prefixes and preempting (by
recompute) when the pool is full. Sequences join and leave the batch at any step.

Generation sequences decode one token per step after their (possibly chunked) prefill;
a verification sequence computes its uncached context plus k drafts in one step.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tandem.cloud.block_manager import BlockPool
from tandem.shared.backpressure import fair_place


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    """A request's tokens and where their KV lives."""

    tenant: str
    tokens: list[int]
    # Tokens that are final (prompt + sampled output, or context + accepted drafts);
    # only these may enter the prefix cache.
    committed: int
    # Trailing positions whose logits the request needs once all tokens are computed.
    num_logits: int = 1
    seq_id: int = field(default_factory=lambda: next(_ids))
    num_computed: int = 0  # leading tokens whose KV is in `blocks`
    blocks: list[int] = field(default_factory=list)
    num_registered: int = 0  # leading blocks entered into the prefix cache
    status: SeqStatus = SeqStatus.WAITING
    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    num_preemptions: int = 0
    num_cached: int = 0  # tokens found computed when the request was first scheduled
    aborted: bool = False

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed


@dataclass(frozen=True)
class ScheduledSeq:
    seq: Sequence
    start: int  # first position computed this step
    num_tokens: int  # positions start .. start + num_tokens - 1
    num_logits: int  # trailing positions of this chunk whose logits are returned

    @property
    def token_ids(self) -> list[int]:
        return self.seq.tokens[self.start:self.start + self.num_tokens]


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, pool: BlockPool, max_num_seqs: int, max_batched_tokens: int,
                 prefix_caching: bool = True,
                 reclaim: Callable[[int], bool] | None = None) -> None:
        self.pool = pool
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.prefix_caching = prefix_caching
        # Called with a number of blocks needed; frees idle state (sessions) and returns
        # whether it freed anything.
        self.reclaim = reclaim or (lambda _needed: False)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        """Queue ``seq`` where its tenant's fair share puts it (shared/backpressure.py)."""
        seq.status = SeqStatus.WAITING
        self.waiting.insert(fair_place(seq.tenant, [s.tenant for s in self.running],
                                       [s.tenant for s in self.waiting]), seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_batched_tokens
        # Decoding sequences first, whatever the budget, so a long prefill never stalls
        # them; then (chunked) prefills of running sequences; then new admissions.
        small = [s for s in self.running if 0 < s.num_uncomputed <= s.num_logits + 16]
        large = [s for s in self.running if s.num_uncomputed > s.num_logits + 16]
        for seq in small + large:
            if seq.status is not SeqStatus.RUNNING:
                continue  # preempted while making room for an earlier one
            n = seq.num_uncomputed if seq in small else self._chunk_size(seq, budget)
            if n == 0 or not self._grow(seq, n, out):
                continue
            out.scheduled.append(self._chunk(seq, n))
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.num_computed == 0 and not seq.blocks:
                self._reuse_prefix(seq)
            n = self._chunk_size(seq, budget)
            if n == 0 or not self._ensure_blocks(seq, seq.num_computed + n):
                self._reset(seq)  # hold no blocks while waiting (full ones stay cached)
                break  # wait for running sequences to finish
            self.waiting.popleft()
            seq.status = SeqStatus.RUNNING
            if seq.first_scheduled is None:
                seq.first_scheduled = time.monotonic()
                seq.num_cached = seq.num_computed
            self.running.append(seq)
            out.scheduled.append(self._chunk(seq, n))
            budget -= n
        return out

    @staticmethod
    def _chunk_size(seq: Sequence, budget: int) -> int:
        """Tokens of ``seq`` to compute within ``budget``; a chunk never splits the
        positions whose logits are needed."""
        remaining = seq.num_uncomputed
        if remaining <= budget:
            return remaining
        return max(min(budget, remaining - seq.num_logits), 0)

    def _chunk(self, seq: Sequence, n: int) -> ScheduledSeq:
        reaches_end = seq.num_computed + n == len(seq.tokens)
        return ScheduledSeq(seq, seq.num_computed, n, min(seq.num_logits, n) if reaches_end else 0)

    def _reuse_prefix(self, seq: Sequence) -> None:
        if not self.prefix_caching:
            return
        # Leave at least the last token to compute: its logits start the output.
        max_blocks = (len(seq.tokens) - seq.num_logits) // self.pool.block_size
        blocks = self.pool.match_prefix(seq.tenant, seq.tokens[:seq.committed], max_blocks)
        seq.blocks = blocks
        seq.num_registered = len(blocks)
        seq.num_computed = len(blocks) * self.pool.block_size

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.pool.block_size)

    def _ensure_blocks(self, seq: Sequence, num_tokens: int) -> bool:
        needed = self._blocks_for(num_tokens) - len(seq.blocks)
        while needed > self.pool.num_free:
            if not self.reclaim(needed - self.pool.num_free):
                return False
        if needed > 0:
            seq.blocks.extend(self.pool.allocate(needed))
        return True

    def _grow(self, seq: Sequence, n: int, out: SchedulerOutput) -> bool:
        """Blocks for ``n`` more tokens of a running seq, preempting the most recently
        admitted other sequences if needed. False if ``seq`` itself was preempted."""
        while not self._ensure_blocks(seq, seq.num_computed + n):
            holder = next((s for s in reversed(self.waiting) if s.blocks), None)
            if holder is not None:  # a waiting session's KV goes before running work
                self._reset(holder)
                continue
            victim = self.running[-1]
            self.preempt(victim)
            out.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def preempt(self, seq: Sequence) -> None:
        """Free a running sequence's KV and queue it first, to be recomputed (its full
        blocks stay in the prefix cache and are usually found again)."""
        self.running.remove(seq)
        self._reset(seq)
        seq.num_preemptions += 1
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)

    def _reset(self, seq: Sequence) -> None:
        """Drop a sequence's KV; it will be recomputed (usually from the prefix cache)."""
        self.free_blocks(seq)
        seq.num_computed = 0

    def after_step(self, scheduled: list[ScheduledSeq]) -> None:
        """Mark the step's tokens computed and cache blocks that became full."""
        for item in scheduled:
            seq = item.seq
            seq.num_computed = item.start + item.num_tokens
            self.register_blocks(seq)

    def register_blocks(self, seq: Sequence) -> None:
        if self.prefix_caching:
            final = seq.tokens[:min(seq.committed, seq.num_computed)]
            seq.num_registered = self.pool.register_full_blocks(
                seq.tenant, final, seq.blocks, seq.num_registered)

    def finish(self, seq: Sequence, keep_blocks: bool = False) -> None:
        """Remove a sequence from the batch; its blocks are freed unless the caller keeps
        them (a speculative session holding its KV between rounds)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SeqStatus.FINISHED
        if not keep_blocks:
            self.free_blocks(seq)

    def free_blocks(self, seq: Sequence) -> None:
        self.pool.release(seq.blocks)
        seq.blocks = []
        seq.num_registered = 0

    def truncate(self, seq: Sequence, length: int) -> int:
        """Keep the KV of the first ``length`` tokens of a finished sequence, freeing the
        blocks past them. A cached (shared, immutable) block is never cut into: the kept
        length drops to its start instead. Returns the kept length."""
        bs = self.pool.block_size
        length = min(length, seq.num_computed)
        if length % bs and length // bs < len(seq.blocks) and \
                self.pool.is_cached(seq.blocks[length // bs]):
            length -= length % bs
        keep_blocks = self._blocks_for(length)
        self.pool.release(seq.blocks[keep_blocks:])
        del seq.blocks[keep_blocks:]
        seq.num_registered = min(seq.num_registered, length // bs)
        seq.num_computed = length
        del seq.tokens[length:]
        seq.committed = min(seq.committed, length)
        return length

    def kv_waste(self) -> float:
        """Fraction of the running sequences' allocated KV slots holding no token (nor
        one being computed)."""
        bs = self.pool.block_size
        allocated = sum(len(s.blocks) for s in self.running) * bs
        used = sum(min(len(s.tokens), len(s.blocks) * bs) for s in self.running)
        return 0.0 if allocated == 0 else (allocated - used) / allocated
