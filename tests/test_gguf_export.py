"""Exporting a transformers model to GGUF for the llama.cpp edge: llama.cpp computes the
same logits as transformers on the exported weights (the query/key row interleaving is
right), an export of the packaged model's own weights re-quantizes to the packaged file
tensor for tensor, and bad exports or options are clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tandem.shared.cli.main import main
from tandem.shared.gguf_export import export_gguf
from tandem.shared.gguf_quant import requantize
from tandem.shared.models import DEFAULT_MODEL, resolve_model

TOKENS = [1, 504, 3458, 314, 4077, 28, 253, 1023, 77, 900, 41, 1650]


def llama_cpp_logits(path: Path, tokens: list[int]) -> np.ndarray:
    import llama_cpp

    model = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, n_threads=2, verbose=False)
    try:
        model.eval(tokens)
        return np.array(model.scores[:len(tokens)])
    finally:
        model.close()


def test_llama_cpp_computes_the_exported_model_like_transformers(tiny_model_dir: Path,
                                                                 tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():  # sharp attention, so that a wrong rotary layout shows in the logits
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
        expected = model(torch.tensor([TOKENS])).logits[0].numpy()
    path = export_gguf(model, resolve_model(DEFAULT_MODEL).path, tmp_path / "tiny.gguf")

    logits = llama_cpp_logits(path, TOKENS)
    assert np.abs(logits - expected).max() < 2e-3 * np.abs(expected).max()
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_exporting_the_packaged_weights_requantizes_to_the_packaged_file(tmp_path: Path) -> None:
    import gguf

    from tandem.shared.model_loader import load_causal_lm

    source = resolve_model(DEFAULT_MODEL)
    f32 = export_gguf(load_causal_lm(source, "float32"), source.path, tmp_path / "export.gguf")
    q4_1 = requantize(f32, tmp_path, "Q4_1", 2)

    packaged, exported = gguf.GGUFReader(str(source.path)), gguf.GGUFReader(q4_1.path)
    by_name = {t.name: t for t in packaged.tensors}
    assert sorted(by_name) == sorted(t.name for t in exported.tensors)
    for tensor in exported.tensors:  # the same type and the same bytes, every tensor
        original = by_name[tensor.name]
        assert tensor.tensor_type == original.tensor_type, tensor.name
        assert bytes(tensor.data) == bytes(original.data), tensor.name
    for key in ("tokenizer.ggml.tokens", "tokenizer.chat_template", "llama.rope.freq_base",
                "llama.attention.head_count_kv", "llama.context_length"):
        assert exported.fields[key].contents() == packaged.fields[key].contents(), key


def test_a_tensors_round_trip_is_what_llama_cpp_stores(tmp_path: Path) -> None:
    """Distillation's llama.cpp quantizer in the loop gives the values of the file that
    llama_model_quantize writes, K-quants and fallback types alike."""
    import gguf

    from tandem.shared.gguf_quant import round_trip

    source = resolve_model(DEFAULT_MODEL)
    q3_k_m = gguf.GGUFReader(requantize(source.path, tmp_path, "Q3_K_M", 2).path)
    packaged = {t.name: t for t in gguf.GGUFReader(str(source.path)).tensors}
    seen = set()
    for tensor in q3_k_m.tensors:
        if tensor.tensor_type in seen or tensor.name == "token_embd.weight":
            continue  # one tensor of each type (Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, F32)
        seen.add(tensor.tensor_type)
        original = packaged[tensor.name]
        weight = gguf.quants.dequantize(np.array(original.data), original.tensor_type)
        stored = gguf.quants.dequantize(np.array(tensor.data), tensor.tensor_type)
        assert np.array_equal(round_trip(weight.reshape(stored.shape), int(tensor.tensor_type)),
                              stored), tensor.tensor_type.name
    assert {t.name for t in seen} >= {"Q4_0", "Q5_0", "Q4_K"}


def test_bad_exports_and_options_are_clear_errors(tiny_model_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.resize_token_embeddings(1000)
    with pytest.raises(ValueError, match="tokenizer has 49152 tokens"):
        export_gguf(model, resolve_model(DEFAULT_MODEL).path, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())

    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--gguf-types", "Q4_1,Q9_Z"])
    assert exit_info.value.code == 2 and "unknown GGUF type(s) Q9_Z" in capsys.readouterr().err
    assert main(["distill", "--model", str(tiny_model_dir), "--out", str(tmp_path)]) == 2
    assert "need a .gguf --model" in capsys.readouterr().err
