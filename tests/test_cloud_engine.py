"""The cloud engine on a tiny random-weight Llama: batched generation equals HF
`generate`, verification accepts exactly the target's tokens and rolls back, the paged
KV cache is freed on cancel, reused per tenant only, and preempts when full."""

import asyncio
import platform
import sys

import pytest
import torch

from tandem.cloud import engine as engine_module
from tandem.cloud.config import CloudConfig
from tandem.shared.model_loader import load_causal_lm
from tandem.cloud.server import build_engine
from tandem.shared import memory as memory_module
from tandem.shared.errors import InvalidArgument, ResourceExhausted
from tandem.shared.memory import release_free_memory
from tandem.shared.models import resolve_model
from tandem.shared.sampling import SamplingParams, TokenSampler
from tandem.shared.tier_handler import TokenRequest

GREEDY = SamplingParams(max_tokens=1)
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 2, 198, 1, 4093, 198]
LONG_PROMPT = list(range(1000, 1040))  # 2.5 blocks of 16


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_causal_lm(resolve_model(str(tiny_model_dir)), "float32")


def make_engine(model, **overrides):
    config = CloudConfig(**{"kv_cache_mb": 4, "max_waiting": 8, **overrides})
    return build_engine(config, model, stop_token_ids=[])


@pytest.fixture(scope="module")
def engine(model):
    eng = make_engine(model)
    yield eng
    eng.close()


def hf_greedy(model, prompt, n):
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False)
    return out[0, len(prompt):].tolist()


async def collect(engine, prompt, n, tenant="", params=None):
    params = params or SamplingParams(max_tokens=n)
    gen = engine.generate(TokenRequest(prompt, TokenSampler(params), tenant))
    tokens = [item.token async for item in gen]
    return tokens


def test_concurrent_generations_each_match_hf_generate(model, engine):
    prompts = [PROMPT, LONG_PROMPT, PROMPT[:5]]

    async def run_all():
        return await asyncio.gather(*(collect(engine, p, 20) for p in prompts))

    results = asyncio.run(run_all())
    for prompt, tokens in zip(prompts, results):
        assert tokens == hf_greedy(model, prompt, 20)
    # Where the CPU allows, decode rows attended through the native paged kernel.
    from tandem.shared import native
    assert engine.runner.model.native_attention == (native.kernels() is not None)
    assert engine.pool.num_used == 0  # everything freed once finished
    ttft = engine.metrics.ttft.collect()[0].samples
    assert next(s.value for s in ttft if s.name.endswith("_count")) >= 3


def test_without_the_native_kernels_generations_still_match_hf(model, monkeypatch):
    # Decode rows then attend through SDPA over gathered KV, RoPE through torch's ops.
    from tandem.shared import native
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.kernels.cache_clear()
    try:
        eng = make_engine(model)
        assert not eng.runner.model.native_attention
        prompts = [PROMPT, LONG_PROMPT, PROMPT[:5]]

        async def run_all():
            return await asyncio.gather(*(collect(eng, p, 12) for p in prompts))

        for prompt, tokens in zip(prompts, asyncio.run(run_all())):
            assert tokens == hf_greedy(model, prompt, 12)
        eng.close()
    finally:
        native.kernels.cache_clear()


def test_preemption_when_the_pool_is_full_still_gives_exact_output(model):
    eng = make_engine(model, kv_cache_mb=1, block_size=16)
    eng.pool.__init__(6, 16)  # 96 token slots for three 40+30-token sequences
    eng.scheduler.pool = eng.pool
    try:
        async def run_all():
            return await asyncio.gather(*(collect(eng, [7 + i] + LONG_PROMPT, 30)
                                          for i in range(3)))

        results = asyncio.run(run_all())
        assert eng.metrics.preemptions._value.get() > 0
        for i, tokens in enumerate(results):
            assert tokens == hf_greedy(model, [7 + i] + LONG_PROMPT, 30)
    finally:
        eng.close()


def test_cancelled_stream_frees_its_blocks(engine):
    async def cancel_early():
        gen = engine.generate(TokenRequest(LONG_PROMPT, TokenSampler(SamplingParams(max_tokens=500))))
        got = [await gen.__anext__() for _ in range(3)]
        assert engine.pool.num_used > 0
        await gen.aclose()
        for _ in range(50):  # the loop frees it before its next step
            await asyncio.sleep(0.01)
            if engine.pool.num_used == 0:
                break
        return got

    assert len(asyncio.run(cancel_early())) == 3
    assert engine.pool.num_used == 0 and not engine.scheduler.running


def test_an_engine_gone_idle_gives_freed_memory_back_once(model, monkeypatch):
    trims = []
    monkeypatch.setattr(engine_module, "IDLE_TRIM_AFTER_S", 0.05)
    monkeypatch.setattr(engine_module, "release_free_memory", lambda: trims.append(1) or True)
    eng = make_engine(model)

    async def run_then_idle():
        await collect(eng, PROMPT, 3)
        await asyncio.sleep(0.5)  # idle: one trim, not one per wait
        trimmed_once = len(trims)
        await collect(eng, PROMPT, 3)  # work again, then idle again: one more
        await asyncio.sleep(0.5)
        return trimmed_once, len(trims)

    try:
        assert asyncio.run(run_then_idle()) == (1, 2)
    finally:
        eng.close()


def test_an_engine_under_steady_load_trims_between_steps(model, monkeypatch):
    trims = []
    monkeypatch.setattr(engine_module, "IDLE_TRIM_AFTER_S", 3600.0)
    monkeypatch.setattr(engine_module, "TRIM_EVERY_S", 0.0)  # after every step
    monkeypatch.setattr(engine_module, "release_free_memory", lambda: trims.append(1) or True)
    eng = make_engine(model)
    try:
        tokens = asyncio.run(collect(eng, PROMPT, 4))
        assert len(tokens) == 4 and len(trims) >= 3  # after each step (the last may end first)
    finally:
        eng.close()


def test_memory_is_released_to_the_os_where_the_c_library_can():
    assert release_free_memory() in (True, False)  # glibc: malloc_trim(0) ran
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert memory_module._malloc_trim() is not None


def test_prefix_cache_is_reused_within_a_tenant_only(model):
    eng = make_engine(model)
    hits = eng.metrics.prefix_hits

    async def ask(tenant):
        before = hits._value.get()
        tokens = await collect(eng, LONG_PROMPT, 4, tenant=tenant)
        await asyncio.sleep(0.05)
        eng._update_gauges()
        return tokens, hits._value.get() - before

    first, cold = asyncio.run(ask("a"))
    again, warm = asyncio.run(ask("a"))
    other, other_hits = asyncio.run(ask("b"))
    eng.close()
    assert cold == 0 and warm == 32 and other_hits == 0
    assert first == again == other  # reuse never changes the output


def test_queue_limit_is_resource_exhausted_before_any_work(model):
    eng = make_engine(model, max_num_seqs=1, max_waiting=1)

    async def overload():
        gens = [eng.generate(TokenRequest(PROMPT, TokenSampler(SamplingParams(max_tokens=50))))
                for _ in range(3)]
        await gens[0].__anext__()  # running
        first_waiting = asyncio.ensure_future(gens[1].__anext__())
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted):
            await gens[2].__anext__()
        first_waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first_waiting
        for g in gens:
            await g.aclose()

    asyncio.run(overload())
    eng.close()


def test_verify_accepts_target_tokens_and_rolls_back_rejections(model, engine):
    target = hf_greedy(model, PROMPT, 12)

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
    assert engine.end_session("t", "s1") and not engine.end_session("t", "s1")
    m = engine.metrics
    assert m.spec_drafts._value.get() >= 2 and m.spec_accepted._value.get() >= 8
    assert m.spec_draft_tokens._value.get() >= 9


def hf_logits(model, tokens):
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0].float()  # [S, V]


def test_verify_scores_each_draft_token_in_the_same_pass(model, engine):
    """score_draft: the target's log-probability and rank of every draft token (the
    cloud judging an answer it did not write), equal to the model's own log-softmax."""
    target = hf_greedy(model, PROMPT, 6)
    draft = target[:2] + [(target[2] + 7) % 1000] + target[3:6]
    logits = hf_logits(model, PROMPT + draft)[len(PROMPT) - 1:-1]  # at each draft position
    result = asyncio.run(engine.verify("t", "scored", PROMPT, draft, GREEDY,
                                       score_draft=True))
    assert (result.accepted, result.next_token) == (2, target[2])  # judging changes nothing
    expected = torch.log_softmax(logits, -1)[torch.arange(len(draft)), torch.tensor(draft)]
    assert result.draft_logprobs == pytest.approx(expected.tolist(), abs=1e-4)
    assert result.draft_ranks[:2] == (0, 0) and result.draft_ranks[2] > 0
    engine.end_session("t", "scored")


def test_lenient_verify_keeps_a_near_tie_and_leniency_one_is_greedy(model, engine):
    """Token-level deferral: the target's second choice is accepted when its probability
    reaches leniency x the top one; leniency 1 accepts only the target's own tokens."""
    probs = torch.softmax(hf_logits(model, PROMPT)[-1], -1)
    top2 = probs.topk(2)
    second, ratio = int(top2.indices[1]), float(top2.values[1] / top2.values[0])

    def verify(leniency, session):
        result = asyncio.run(engine.verify("t", session, PROMPT, [second], GREEDY,
                                           leniency=leniency))
        engine.end_session("t", session)
        return result.accepted, result.next_token

    assert verify(1.0, "l1") == (0, int(top2.indices[0]))
    assert verify(ratio * 1.01, "l2")[0] == 0  # just below the bar: the target's token
    assert verify(ratio * 0.99, "l3")[0] == 1  # within it: the draft's token is kept


def test_verify_leniency_is_checked_before_any_work():
    from tandem.cloud.engine import validate_verify

    sampled = SamplingParams(max_tokens=1, temperature=0.7)
    for leniency, sampling in ((1.5, GREEDY), (-0.1, GREEDY), (float("nan"), GREEDY),
                               (0.5, sampled)):
        with pytest.raises(InvalidArgument, match="leniency"):
            validate_verify(PROMPT, [1, 2], [], 0, "s", 49152, 512, sampling,
                            leniency=leniency)


def test_verify_sessions_are_per_tenant(engine):
    async def both():
        await engine.verify("tenant-a", "shared-id", PROMPT, [], GREEDY)
        return await engine.verify("tenant-b", "shared-id", PROMPT, [], GREEDY)

    assert asyncio.run(both()).cached_tokens == 0


def test_seeded_sampling_repeats_and_penalties_change_output(engine):
    sampled = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, min_p=0.01, seed=7)
    penalised = SamplingParams(max_tokens=12, repetition_penalty=5.0, frequency_penalty=2.0)

    async def run():
        a = await collect(engine, PROMPT, 12, params=sampled)
        b = await collect(engine, PROMPT, 12, params=sampled)
        plain = await collect(engine, PROMPT, 12)
        pen = await collect(engine, PROMPT, 12, params=penalised)
        return a, b, plain, pen

    a, b, plain, pen = asyncio.run(run())
    assert a == b and len(a) == 12
    assert pen != plain and len(set(pen)) > len(set(plain)) - 1


def test_other_architectures_fall_back_to_transformers_with_exact_output():
    from transformers import GPT2Config, GPT2LMHeadModel

    from tandem.cloud.model_runner import RecomputeHFRunner

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=500,
                                      n_positions=256)).eval()
    eng = make_engine(gpt2)
    try:
        assert isinstance(eng.runner, RecomputeHFRunner)
        prompt = [5, 17, 42, 99]

        async def run_two():
            return await asyncio.gather(collect(eng, prompt, 10), collect(eng, prompt[:2], 10))

        first, second = asyncio.run(run_two())
        assert first == hf_greedy(gpt2, prompt, 10)
        assert second == hf_greedy(gpt2, prompt[:2], 10)
    finally:
        eng.close()


def test_a_request_whose_sampling_fails_fails_alone(model):
    """Values that slip past validation and break sampling (a repetition penalty that
    overflows float32) fail that request with INVALID_ARGUMENT; the requests batched with
    it finish with the same tokens as alone."""
    eng = make_engine(model)
    poison = SamplingParams(max_tokens=8, temperature=0.7, repetition_penalty=1e-45)
    try:
        alone = asyncio.run(collect(eng, PROMPT, 8))

        async def run_all():
            return await asyncio.gather(collect(eng, PROMPT, 8, params=poison),
                                        *(collect(eng, PROMPT, 8) for _ in range(3)),
                                        return_exceptions=True)

        poisoned, *others = asyncio.run(run_all())
        assert isinstance(poisoned, InvalidArgument)
        assert others == [alone] * 3
        assert eng.pool.num_used == 0
    finally:
        eng.close()
