"""H2O KV eviction in the torch edge runtime (tiny random-weight model): a budget at least
the sequence changes nothing, a token budget bounds the cache through a long sequence,
eviction keeps the recent window and the heaviest hitters, rollback is limited to what
is still cached, bad options are clear errors."""

from __future__ import annotations


import pytest
import torch

from tandem.edge.kv_eviction import KVEviction, parse_kv_budget
from tandem.edge.torch_model import dense_runtime

IDS = [5, 17, 300, 42, 9, 1000, 77, 8, 123, 4567, 11, 12, 13, 14, 15, 16] * 3


def stream(runtime, ids):  # type: ignore[no-untyped-def]
    return torch.cat([runtime.forward([token]) for token in ids])


def test_a_budget_at_least_the_sequence_equals_the_full_cache_exactly(tiny) -> None:  # type: ignore[no-untyped-def]
    shape, state, _ = tiny
    full = stream(dense_runtime(shape, state), IDS)
    for eviction in (KVEviction(budget=len(IDS)), KVEviction(budget=1.0),
                     KVEviction(budget=len(IDS), method="recent")):
        runtime = dense_runtime(shape, state)
        runtime.set_kv_eviction(eviction)
        assert torch.equal(stream(runtime, IDS), full)


def test_a_token_budget_bounds_the_cache_and_changes_the_output(tiny) -> None:  # type: ignore[no-untyped-def]
    shape, state, _ = tiny
    full = stream(dense_runtime(shape, state), IDS)
    runtime = dense_runtime(shape, state, capacity=8)  # growth and eviction together
    runtime.set_kv_eviction(KVEviction(budget=12, recent=4))
    lengths = []
    evicted = []
    for token in IDS:
        evicted.append(runtime.forward([token]))
        lengths.append(runtime.length)
    assert max(lengths) == 12 and runtime.position == len(IDS)
    assert torch.equal(torch.cat(evicted[:12]), full[:12])  # nothing evicted yet
    assert not torch.allclose(torch.cat(evicted[13:]), full[13:])
    runtime.forward(IDS[:20])  # a prompt longer than the budget: attended, then evicted
    assert runtime.length == 12 and runtime.position == len(IDS) + 20


def test_eviction_keeps_the_recent_window_and_the_heaviest_hitters() -> None:
    mass = torch.tensor([[[5.0, 0.1, 3.0, 0.2, 0.3, 0.0, 0.0, 0.0]]])  # [L=1, KVH=1, S=8]
    keep = KVEviction(budget=5, recent=3).keep(mass, 5)
    assert keep.tolist() == [[[0, 2, 5, 6, 7]]]  # heavy 0 and 2, recent 5-7
    assert KVEviction(budget=5, method="recent").keep(mass, 5).tolist() == [[[3, 4, 5, 6, 7]]]


def test_rollback_reaches_back_only_as_far_as_the_recent_window(tiny) -> None:  # type: ignore[no-untyped-def]
    shape, state, _ = tiny
    runtime = dense_runtime(shape, state)
    runtime.set_kv_eviction(KVEviction(budget=10, recent=4))
    stream(runtime, IDS[:30])
    assert runtime.can_truncate(27) and not runtime.can_truncate(20)
    runtime.truncate(27)
    assert (runtime.position, runtime.length) == (27, 7)
    with pytest.raises(ValueError, match="cannot roll back"):
        runtime.truncate(20)
    runtime.truncate(0)
    assert (runtime.position, runtime.length) == (0, 0)


def test_bad_kv_eviction_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="below the recent window"):
        KVEviction(budget=8, recent=16)
    with pytest.raises(ValueError, match="unknown KV eviction method"):
        KVEviction(budget=8, method="lru")
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        KVEviction(budget=1.5)
    with pytest.raises(ValueError, match="at least one token"):
        KVEviction(budget=0)
    assert parse_kv_budget("512") == 512 and parse_kv_budget("0.5") == 0.5


def test_the_torch_backend_keeps_a_long_chat_within_its_kv_budget(tiny) -> None:  # type: ignore[no-untyped-def]
    """A chat whose every turn extends the last stays within the budget; a request that
    parts from the cached sequence further back than the recent window re-reads it and
    answers as a fresh backend does."""
    import asyncio

    from tandem.edge.artifacts import Built
    from tandem.edge.torch_backend import TorchBackend
    from tandem.shared.sampling import SamplingParams, TokenSampler
    from tandem.shared.tier_handler import TokenRequest

    shape, state, _ = tiny

    def backend() -> TorchBackend:
        runtime = dense_runtime(shape, state)
        runtime.set_kv_eviction(KVEviction(budget=16, recent=4))
        return TorchBackend(Built(runtime, runtime.weight_bytes), "fp32", 1)

    chat, greedy = backend(), TokenSampler(SamplingParams(max_tokens=8))
    prompt = IDS[:6]
    for turn in range(5):
        reply = asyncio.run(chat.draft(TokenRequest(prompt, greedy), 4, frozenset()))
        assert chat.runtime.length <= 16
        prompt = prompt + reply.tokens + IDS[turn * 3:turn * 3 + 3]
    assert chat.runtime.position > 30
    early = asyncio.run(chat.draft(TokenRequest(IDS[:5] + [99], greedy), 3, frozenset()))
    fresh = backend()
    assert asyncio.run(fresh.draft(TokenRequest(IDS[:5] + [99], greedy), 3,
                                   frozenset())).tokens == early.tokens
    chat.close()
    fresh.close()


def test_checking_a_kv_budget_does_not_load_torch() -> None:
    """The edge validates its configuration before it sets OpenMP's wait policy, which
    must happen before torch loads (`tandem serve edge --kv-budget` once failed so)."""
    import subprocess
    import sys

    code = ("import sys; from tandem.edge.config import EdgeConfig; "
            "EdgeConfig(backend='torch', kv_budget='64'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
