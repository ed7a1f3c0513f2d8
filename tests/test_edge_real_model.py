"""The torch edge runtime and llama.cpp re-quantization on the real SmolLM2-135M."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from tandem.edge import artifacts
from tandem.edge.compress.recipes import RECIPES, build, with_overrides
from tandem.edge.compress.perplexity import gguf_perplexity, runtime_perplexity, token_windows
from tandem.edge.compress.pipeline import calibration_for, text_ids
from tandem.edge.torch_backend import TorchBackend, dense_source
from tandem.shared.models import DEFAULT_MODEL, resolve_model
from tandem.shared.sampling import SamplingParams, TokenSampler
from tandem.shared.tier_handler import TokenRequest

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():  # type: ignore[no-untyped-def]
    torch.set_num_threads(2)
    source = resolve_model(DEFAULT_MODEL)
    shape, state = dense_source(source)
    calib = calibration_for(shape, state, text_ids(source, "calibration")[:512])
    windows = token_windows(text_ids(source, "evaluation"), 128, 128)
    return source, shape, state, calib, windows


def test_compressed_smollm2_perplexity_and_flash(smollm2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source, shape, state, calib, windows = smollm2
    ppl = {}
    for name in ("resident", "int8-act-sparse50", "flash-int8sel"):
        built = build(shape, state, calib, RECIPES[name], str(tmp_path))
        ppl[name] = runtime_perplexity(built.runtime, windows)
        if name == "flash-int8sel":
            store = built.store
            runtime = built.runtime
            runtime.forward(windows[0][:16])
            before = store.bytes_read  # type: ignore[union-attr]
            runtime.forward([windows[0][16]])
            per_token = store.bytes_read - before  # type: ignore[union-attr]
            naive = shape.layers * shape.ffn * store.record  # type: ignore[union-attr]
            assert 0 < per_token < naive
            assert runtime.weight_bytes <= 0.6 * built.model_bytes + shape.layers * store.record  # type: ignore[union-attr]
        built.close()
    assert 5 < ppl["resident"] < 60  # a working model on plain English
    assert ppl["int8-act-sparse50"] < 1.15 * ppl["resident"]
    assert ppl["flash-int8sel"] < 1.2 * ppl["resident"]


def test_torch_backend_drafts_like_greedy_decoding(smollm2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source, shape, state, calib, windows = smollm2
    recipe = with_overrides(RECIPES["int8"])
    built = build(shape, state, calib, recipe, str(tmp_path))
    artifacts.save(built, recipe, tmp_path, source.name)
    backend = TorchBackend(artifacts.load(tmp_path), "int8", 2)
    greedy = TokenSampler(SamplingParams(max_tokens=8))
    prompt = windows[0][:20]
    draft = asyncio.run(backend.draft(TokenRequest(prompt, greedy), 6, frozenset()))
    runtime = built.runtime
    runtime.truncate(0)
    logits = runtime.forward(prompt)
    expected = []
    for _ in range(6):
        expected.append(int(logits[-1].argmax()))
        logits = runtime.forward([expected[-1]])
    assert draft.tokens == expected
    again = asyncio.run(backend.draft(TokenRequest(prompt + expected[:3], greedy), 2, frozenset()))
    assert again.cached_tokens == 22 and again.tokens == expected[3:5]
    backend.close()
    built.close()


def test_gguf_requantize_to_q8_0(smollm2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tandem.shared.gguf_quant import requantize

    source, *_, windows = smollm2
    result = requantize(source.path, tmp_path, "Q8_0", 2)
    assert result.bytes > source.path.stat().st_size  # 8-bit is larger than the Q4_1 source
    base = gguf_perplexity(str(source.path), windows, 2)
    assert abs(gguf_perplexity(result.path, windows, 2) / base - 1) < 0.05


@pytest.mark.parametrize("flash_attn", [False, True])
def test_llama_cpp_drafts_continue_after_a_rollback(flash_attn: bool) -> None:
    """With and without flash attention: a draft after rolling back to a prefix is what the
    draft from that prefix was (the KV past it is dropped, not re-processed)."""
    from tandem.edge.config import EdgeConfig
    from tandem.edge.llama_cpp_backend import LlamaCppBackend

    config = EdgeConfig(threads=2, flash_attn=flash_attn)
    backend = LlamaCppBackend.from_config(config, resolve_model(config.model))
    greedy = TokenSampler(SamplingParams(max_tokens=8))
    prompt = list(range(1000, 1030))
    first = asyncio.run(backend.draft(TokenRequest(prompt, greedy), 8, frozenset()))
    again = asyncio.run(backend.draft(TokenRequest(prompt + first.tokens[:3], greedy), 4, frozenset()))
    assert again.cached_tokens == len(prompt) + 2 and again.tokens == first.tokens[3:7]
    backend.close()
