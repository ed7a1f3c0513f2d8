"""The cloud scheduler, block pool and acceptance rules without a model."""

import numpy as np
import pytest
import torch

from tandem.cloud.block_manager import BlockPool
from tandem.cloud.sampler import accept_by_rejection, greedy_rows
from tandem.cloud.scheduler import Scheduler, Sequence
from tandem.shared.sampling import SamplingParams, TokenSampler


def run_prefill(scheduler, seq):
    scheduler.add(seq)
    out = scheduler.schedule()
    scheduler.after_step(out.scheduled)
    return out


def test_prefix_blocks_are_shared_within_a_tenant_and_never_across():
    pool = BlockPool(16, 4)
    sched = Scheduler(pool, max_num_seqs=8, max_batched_tokens=64)
    prompt = list(range(10))  # two full blocks + 2 tokens
    first = Sequence("a", list(prompt), committed=10)
    run_prefill(sched, first)
    same = Sequence("a", prompt + [99], committed=11)
    out = run_prefill(sched, same)
    assert out.scheduled[0].start == 8 and same.blocks[:2] == first.blocks[:2]
    assert pool.ref_count[first.blocks[0]] == 2
    other = Sequence("b", prompt + [99], committed=11)
    out = run_prefill(sched, other)
    assert out.scheduled[0].start == 0 and not set(other.blocks) & set(first.blocks)


def test_freed_cached_blocks_are_evicted_least_recently_used_first():
    pool = BlockPool(4, 2)
    sched = Scheduler(pool, max_num_seqs=8, max_batched_tokens=64)
    old = Sequence("t", [1, 2, 3], committed=3)
    new = Sequence("t", [4, 5, 6], committed=3)
    for seq in (old, new):
        run_prefill(sched, seq)
        sched.finish(seq)
    assert pool.num_free == 4 and pool.num_cached == 2
    pool.allocate(1)  # free blocks are reused in release order (LRU)
    pool.allocate(2)
    # The oldest cached block went first; `new`'s prefix is still cached.
    assert pool.match_prefix("t", [4, 5, 6], 1) and not pool.match_prefix("t", [1, 2, 3], 1)


def test_preemption_frees_the_latest_sequence_and_requeues_it_first():
    pool = BlockPool(4, 2)
    sched = Scheduler(pool, max_num_seqs=8, max_batched_tokens=64, prefix_caching=False)
    a = Sequence("t", [1, 2, 3], committed=3)
    b = Sequence("t", [4, 5, 6], committed=3)
    sched.add(a)
    sched.add(b)
    sched.after_step(sched.schedule().scheduled)  # both prefilled: 4 blocks used
    a.tokens += [7, 8]  # a needs a third block
    out = sched.schedule()
    assert out.preempted == [b] and [s.seq for s in out.scheduled] == [a]
    assert b.num_computed == 0 and not b.blocks and sched.waiting[0] is b


def test_truncate_never_cuts_into_a_cached_block():
    pool = BlockPool(8, 4)
    sched = Scheduler(pool, max_num_seqs=8, max_batched_tokens=64)
    seq = Sequence("t", list(range(10)), committed=10)
    run_prefill(sched, seq)
    sched.finish(seq, keep_blocks=True)
    assert sched.truncate(seq, 9) == 9  # the partial third block is not cached
    assert sched.truncate(seq, 6) == 4  # block 2 (tokens 4-7) is cached: keep 4
    assert len(seq.blocks) == 1


def test_rejection_sampling_reproduces_the_target_distribution():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    q = np.array([0.1, 0.2, 0.3, 0.4])
    sampler = TokenSampler(SamplingParams(max_tokens=1, temperature=1.0))
    counts = np.zeros(4)
    for _ in range(20000):
        draft = int(rng.choice(4, p=q))
        result = accept_by_rejection([draft], np.stack([logits, logits]), sampler, [q], rng)
        counts[draft if result.accepted else result.next_token] += 1
    assert np.allclose(counts / counts.sum(), [0.5, 0.3, 0.15, 0.05], atol=0.015)


def test_greedy_rows_score_only_the_rows_asked_and_pick_every_rows_argmax():
    torch.manual_seed(0)
    logits = torch.randn(5, 300)
    tokens, logprobs = greedy_rows(logits)
    assert tokens == logits.argmax(-1).tolist()
    expected = torch.log_softmax(logits, -1)[range(5), tokens].tolist()
    assert logprobs == pytest.approx(expected, abs=1e-6)
    # A verify round's rows (False) need only their argmax.
    scored = [True, False, False, True, False]
    some_tokens, some = greedy_rows(logits, scored)
    assert some_tokens == tokens
    assert [some[1], some[2], some[4]] == [None, None, None]
    assert [some[0], some[3]] == pytest.approx([logprobs[0], logprobs[3]], abs=1e-6)
    assert greedy_rows(logits, [False] * 5) == (tokens, [None] * 5)
