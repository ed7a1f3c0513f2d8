"""The cloud engine on a tiny random-weight Llama: generation equals HF `generate`,
verification accepts exactly the target's tokens, and session KV reuse/rollback is exact."""

import asyncio

import pytest
import torch

from tandem.cloud.engine import CloudEngine, new_kv_cache
from tandem.cloud.model_loader import load_causal_lm
from tandem.cloud.sessions import SessionStore
from tandem.shared.models import resolve_model
from tandem.shared.sampling import SamplingParams, TokenSampler

GREEDY = SamplingParams(max_tokens=1)
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 2, 198, 1, 4093, 198]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    model = load_causal_lm(resolve_model(str(tiny_model_dir)), "float32")
    eng = CloudEngine(model, SessionStore(8, 10_000, 600, new_kv_cache))
    yield eng
    eng.close()


def hf_greedy(model, prompt, n):
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False)
    return out[0, len(prompt):].tolist()


def engine_greedy(engine, prompt, n):
    async def collect():
        tokens = []
        gen = engine.generate(prompt, TokenSampler(SamplingParams(max_tokens=n)), "")
        async for item in gen:
            tokens.append(item.token)
            if len(tokens) == n:
                break
        await gen.aclose()
        return tokens

    return asyncio.run(collect())


def test_generate_matches_hf_generate(engine):
    assert engine_greedy(engine, PROMPT, 24) == hf_greedy(engine.model, PROMPT, 24)


def test_verify_accepts_target_tokens_and_rolls_back_rejections(engine):
    target = hf_greedy(engine.model, PROMPT, 12)

    async def rounds():
        # Round 1: four correct drafts, then a wrong one -> 4 accepted, next = target[4].
        wrong = (target[4] + 1) % 1000
        r1 = await engine.verify("t", "s1", PROMPT, target[:4] + [wrong], GREEDY)
        # Round 2 continues from the cloud's correction; the KV of `wrong` must be gone.
        seq = PROMPT + target[:5]
        r2 = await engine.verify("t", "s1", seq, target[5:9], GREEDY)
        return r1, r2

    r1, r2 = asyncio.run(rounds())
    assert (r1.accepted, r1.next_token) == (4, target[4])
    assert r1.cached_tokens == 0 and r1.computed_tokens == len(PROMPT) + 5
    assert (r2.accepted, r2.next_token) == (4, target[9])
    # Only the cloud's own token needed computing besides the new drafts.
    assert r2.cached_tokens == len(PROMPT) + 4
    assert r2.computed_tokens == 1 + 4


def test_sessions_are_per_tenant(engine):
    async def both():
        await engine.verify("tenant-a", "shared-id", PROMPT, [], GREEDY)
        return await engine.verify("tenant-b", "shared-id", PROMPT, [], GREEDY)

    assert asyncio.run(both()).cached_tokens == 0


def test_session_store_evicts_least_recently_used():
    store = SessionStore(max_sessions=2, max_tokens=100, idle_seconds=600, new_cache=list)
    store.acquire("", "a")
    store.acquire("", "b")
    store.acquire("", "a")
    store.acquire("", "c")  # evicts b, the least recently used
    assert store.drop("", "b") is False
    assert store.drop("", "a") and store.drop("", "c")
