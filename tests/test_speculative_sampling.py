"""Sampling-mode speculative decoding is lossless: whatever the draft distribution, the
token the cloud emits after one verify round is distributed as the cloud's own sampling
distribution (a chi-square test on a tiny random-weight model)."""

import asyncio

import numpy as np
import pytest
import torch

from tandem.cloud.config import CloudConfig
from tandem.shared.model_loader import load_causal_lm
from tandem.cloud.server import build_engine
from tandem.shared.models import resolve_model
from tandem.shared.sampling import SamplingParams, TokenSampler

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 2, 198, 1, 4093, 198]
TRIALS = 800
# chi-square critical value, 3 degrees of freedom, p = 0.001.
CHI2_CRITICAL = 16.27


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    model = load_causal_lm(resolve_model(str(tiny_model_dir)), "float32")
    engine = build_engine(CloudConfig(kv_cache_mb=4), model, stop_token_ids=[])
    params = SamplingParams(max_tokens=1, temperature=1.0, top_k=4)
    with torch.inference_mode():
        logits = model(torch.tensor([PROMPT])).logits[0, -1].numpy()
    target = TokenSampler(params).distribution(logits)  # p: 4 tokens of support
    yield engine, params, target
    engine.close()


def first_emitted(engine, params, draft_q, trials, seed):
    """Run `trials` single-token rounds with drafts sampled from q (or no draft q)."""
    rng = np.random.default_rng(seed)
    vocab = len(draft_q)

    async def rounds():
        out = []
        for i in range(trials):
            x = int(rng.choice(vocab, p=draft_q))
            result = await engine.verify("t", "stat", PROMPT, [x], params,
                                         draft_probs=[draft_q] if i % 2 == 0 else None)
            out.append(x if result.accepted >= 1 else result.next_token)
        return out

    return asyncio.run(rounds())


def chi_square(samples, target):
    support = np.flatnonzero(target)
    counts = np.array([sum(1 for s in samples if s == t) for t in support], dtype=float)
    assert counts.sum() == len(samples), "a token outside the target's support was emitted"
    expected = target[support] * len(samples)
    return float(((counts - expected) ** 2 / expected).sum())


def test_rejection_sampling_output_follows_the_target_distribution(setup):
    engine, params, target = setup
    # A draft that disagrees with the target: half its mass off the target's support.
    q = np.zeros_like(target)
    support = np.flatnonzero(target)
    q[support] = np.array([0.05, 0.05, 0.2, 0.2])[:len(support)]
    q[np.argsort(target)[:2]] = 0.25  # two tokens the target never samples
    q /= q.sum()
    samples = first_emitted(engine, params, q, TRIALS, seed=0)
    assert chi_square(samples, target) < CHI2_CRITICAL
