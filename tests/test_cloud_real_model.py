"""The cloud engine on the real SmolLM2-135M: batched greedy generation in fp32 equals HF
`generate` token for token, and verifying that output as drafts accepts all of it (decode
and verify forwards agree, which lossless speculation needs); bf16 equals HF's bf16."""

import asyncio

import pytest
import torch

from tandem.cloud.config import CloudConfig
from tandem.shared.model_loader import load_causal_lm
from tandem.cloud.server import build_engine
from tandem.shared.models import DEFAULT_MODEL, eos_token_ids, resolve_model
from tandem.shared.sampling import SamplingParams, TokenSampler
from tandem.shared.tier_handler import TokenRequest

pytestmark = pytest.mark.real_model

QUESTIONS = ["What makes a good cup of tea?", "List three uses for a paperclip.",
             "Why do leaves change colour in autumn?"]
N = 24


@pytest.fixture(scope="module")
def model():
    return load_causal_lm(resolve_model(DEFAULT_MODEL), "float32")


def chat_ids(tokenizer, question):
    return list(tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                              add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def test_batched_greedy_equals_hf_and_verify_accepts_it(model, smollm2_tokenizer):
    engine = build_engine(CloudConfig(kv_cache_mb=64), model, stop_token_ids=[])
    prompts = [chat_ids(smollm2_tokenizer, q) for q in QUESTIONS]

    async def generate(prompt):
        gen = engine.generate(TokenRequest(prompt, TokenSampler(SamplingParams(max_tokens=N))))
        return [item.token async for item in gen]

    async def verify_in_rounds(prompt, output, k=4):
        """Feed the decoded output back as drafts, k per round, as the router does."""
        tokens, accepted = list(prompt), 0
        while accepted < len(output) - 1:
            draft = output[accepted:accepted + k][:len(output) - 1 - accepted]
            # One session id for all streams on purpose: concurrent rounds take over each
            # other's KV (cut to the common prefix), which must never change a result.
            result = await engine.verify("t", "shared-session", tokens, draft,
                                         SamplingParams(max_tokens=1))
            assert result.accepted == len(draft)
            assert result.next_token == output[accepted + len(draft)]
            accepted += len(draft) + 1
            tokens = list(prompt) + output[:accepted]

    async def run_all():
        alone = await generate(prompts[0])  # batch-1 steps (one-row matmuls)
        outputs = await asyncio.gather(*(generate(p) for p in prompts))
        await asyncio.gather(*(verify_in_rounds(p, o) for p, o in zip(prompts, outputs)))
        return alone, outputs

    try:
        alone, outputs = asyncio.run(run_all())
    finally:
        engine.close()
    assert alone == outputs[0]
    eos = eos_token_ids(smollm2_tokenizer)
    for prompt, output in zip(prompts, outputs):
        with torch.inference_mode():
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=N, do_sample=False)
        ref = ref[0, len(prompt):].tolist()
        # HF stops at EOS; compare up to and including it.
        cut = next((i + 1 for i, t in enumerate(output) if t in eos), N)
        assert output[:cut] == ref[:cut]


def test_bfloat16_greedy_equals_hf_in_bfloat16(smollm2_tokenizer):
    """The fast path in bf16 (oneDNN-packed bf16 weights, norms in fp32 as transformers
    does) gives HF `generate`'s bf16 tokens."""
    model = load_causal_lm(resolve_model(DEFAULT_MODEL), "bfloat16")
    engine = build_engine(CloudConfig(kv_cache_mb=64, dtype="bfloat16"), model, stop_token_ids=[])
    assert type(engine.runner).__name__ == "PagedLlamaRunner"  # not the HF fallback
    eos = eos_token_ids(smollm2_tokenizer)

    async def generate(prompt):
        gen = engine.generate(TokenRequest(prompt, TokenSampler(SamplingParams(max_tokens=N))))
        return [item.token async for item in gen]

    try:
        for question in QUESTIONS:
            prompt = chat_ids(smollm2_tokenizer, question)
            ours = asyncio.run(generate(prompt))
            with torch.inference_mode():
                ref = model.generate(torch.tensor([prompt]), max_new_tokens=N, do_sample=False)
            cut = next((i + 1 for i, t in enumerate(ours) if t in eos), N)  # HF stops at EOS
            assert ours[:cut] == ref[0, len(prompt):].tolist()[:cut]
    finally:
        engine.close()
