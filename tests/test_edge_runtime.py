"""The torch edge runtime on a tiny random-weight Llama: exact forward pass, KV rollback,
quantization, Wanda, activation sparsity, flash offloading (windowing must not change the
arithmetic), artifacts and the backend's drafts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tandem.edge import artifacts
from tandem.edge.compress.recipes import RECIPES, Recipe, build, with_overrides
from tandem.edge.flash import fill_gaps, runs_of
from tandem.edge.compress.calibration import awq_input_scale, wanda_mask
from tandem.edge.quantize import Int4Linear, Int8Linear, quantize_int4
from tandem.edge.sparsity import NeuronRows
from tandem.edge.torch_backend import TorchBackend
from tandem.edge.torch_model import PackedLinear, dense_runtime
from tandem.shared.sampling import SamplingParams, TokenSampler
from tandem.shared.tier_handler import TokenRequest

IDS = [5, 17, 300, 42, 9, 1000, 77, 8, 123, 4567, 11, 12, 13, 14, 15, 16]


def test_forward_matches_transformers(tiny_model_dir: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    shape, state, _ = tiny
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = hf(torch.tensor([IDS])).logits[0]
    runtime = dense_runtime(shape, state)
    ours = torch.cat([runtime.forward(IDS[:10], last_only=False), runtime.forward(IDS[10:], last_only=False)])
    assert torch.allclose(ours, reference, atol=1e-4)


def test_truncate_rolls_back_without_recomputing(tiny) -> None:  # type: ignore[no-untyped-def]
    shape, state, _ = tiny
    runtime = dense_runtime(shape, state, capacity=4)  # also exercises cache growth
    full = runtime.forward(IDS)
    runtime.truncate(0)
    runtime.forward(IDS[:8] + [99, 98])  # a rejected continuation
    runtime.truncate(8)
    assert runtime.length == 8
    assert torch.allclose(runtime.forward(IDS[8:]), full, atol=1e-5)


def test_int8_and_int4_quantization_errors_are_small() -> None:
    torch.manual_seed(0)
    weight, x = torch.randn(96, 64), torch.randn(5, 64)
    exact = x @ weight.T
    rel = lambda y: ((y - exact).norm() / exact.norm()).item()  # noqa: E731
    assert rel(Int8Linear.from_dense(weight)(x)) < 0.02
    int4 = Int4Linear.from_dense(weight, group=32)
    assert rel(int4(x)) < 0.15
    assert int4.nbytes == weight.numel() // 2 + 2 * 2 * weight.numel() // 32  # nibbles + bf16
    with pytest.raises(ValueError, match="group size"):
        Int4Linear.from_dense(weight, group=24)


def test_int4_weights_round_trip_through_the_kernel_layout() -> None:
    """Only the INT4 kernel's layout stays resident; saving recovers the exact nibbles."""
    torch.manual_seed(0)
    weight, x = torch.randn(96, 64), torch.randn(2, 3, 64)
    packed, scale, zero = quantize_int4(weight, 32)
    int4 = Int4Linear(packed, scale, zero, input_scale=torch.rand(64) + 0.5)
    saved = int4.tensors()
    assert torch.equal(saved["packed"], packed)
    assert torch.equal(saved["scale"], scale) and torch.equal(saved["zero"], zero)
    reloaded = Int4Linear.from_tensors(saved, {})
    assert torch.equal(reloaded(x), int4(x))
    exact = x @ int4.effective_weight().T
    assert ((int4(x) - exact).norm() / exact.norm()).item() < 0.01  # bf16 activations
    with pytest.raises(ValueError, match="rebuild"):
        Int4Linear.from_tensors({"packed": packed, "scale": scale, "minimum": zero}, {})


def test_int8_linear_accepts_weights_at_any_address() -> None:
    """Tensors inside a loaded safetensors file sit at arbitrary offsets; the INT8 kernel
    needs aligned rows, so such weights are copied (the kernel crashed on them)."""
    torch.manual_seed(0)
    q, scale = torch.randint(-127, 128, (96, 64), dtype=torch.int8), torch.rand(96)
    storage = torch.zeros(q.numel() + 24, dtype=torch.int8)
    storage[24:] = q.flatten()
    shifted = storage[24:].view(96, 64)
    assert shifted.data_ptr() % 64
    x = torch.randn(5, 3, 64)
    out = Int8Linear(shifted, scale)(x)
    assert out.shape == (5, 3, 96) and out.dtype == torch.float32
    assert torch.equal(out, Int8Linear(q, scale)(x))
    exact = x @ (q.float() * scale[:, None]).T
    assert ((out - exact).norm() / exact.norm()).item() < 0.01  # bf16 activations


def test_packed_linear_matches_f_linear_and_cannot_be_saved() -> None:
    """Loaded dense layers run packed for oneDNN; same product, no dense weight kept."""
    torch.manual_seed(0)
    weight = torch.randn(1536, 576)
    packed = PackedLinear(weight)
    for rows in (1, 3):
        x = torch.randn(rows, 576)
        assert torch.allclose(packed(x), F.linear(x, weight), atol=1e-4)
    assert packed.nbytes == weight.numel() * 4
    with pytest.raises(TypeError, match="save the model"):
        packed.tensors()


def test_neuron_rows_gather_is_the_masked_down_projection() -> None:
    """Activation-sparse FFNs keep a dense down projection as one row per neuron: a
    token's product over its surviving neurons equals the masked dense one, and it is
    saved as the usual [H, F] weight."""
    torch.manual_seed(0)
    weight, h = torch.randn(64, 96), torch.randn(1, 96)  # [H, F], [1, F]
    rows = NeuronRows(weight)
    keep = h.abs()[0] >= 0.7
    dense = F.linear(h * keep, weight)
    assert torch.allclose(rows.gather(h, keep.nonzero().squeeze(1)), dense, atol=1e-5)
    assert torch.allclose(rows(h * keep), dense, atol=1e-5)
    assert torch.equal(rows.tensors()["weight"], weight)


def test_awq_scaling_reduces_error_on_outlier_channels() -> None:
    torch.manual_seed(0)
    weight = torch.randn(64, 64)
    inputs = torch.randn(256, 64) * (1 + 20 * (torch.arange(64) % 16 == 0))  # salient channels
    exact = inputs @ weight.T
    plain = Int4Linear.from_dense(weight, 32)(inputs)
    aware = Int4Linear.from_dense(weight, 32, awq_input_scale(weight, inputs, 32))(inputs)
    assert (aware - exact).norm() <= (plain - exact).norm()


def test_wanda_masks_keep_half_per_row_and_two_of_four() -> None:
    torch.manual_seed(0)
    weight, inputs = torch.randn(8, 16), torch.randn(32, 16)
    unstructured = wanda_mask(weight, inputs, "unstructured")
    assert (unstructured.sum(1) == 8).all()
    two_four = wanda_mask(weight, inputs, "2:4")
    assert (two_four.view(8, 4, 4).sum(-1) == 2).all()
    scores = weight.abs() * inputs.norm(dim=0)
    for row in range(8):
        assert scores[row][unstructured[row]].min() >= scores[row][~unstructured[row]].max()


def test_activation_sparsity_reaches_target(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shape, state, calib = tiny
    built = build(shape, state, calib, Recipe(act_sparsity=0.5), str(tmp_path))
    ffn = built.runtime.layers[0].ffn
    x = calib.inputs[(0, "ffn")]
    h = torch.nn.functional.silu(ffn.gate(x)) * ffn.up(x)  # type: ignore[attr-defined]
    zeroed = (h.abs() < ffn.threshold).float().mean().item()  # type: ignore[attr-defined]
    assert 0.45 < zeroed < 0.55
    dense = dense_runtime(shape, state)
    sparse_logits, dense_logits = built.runtime.forward(IDS), dense.forward(IDS)
    assert not torch.equal(sparse_logits, dense_logits)
    assert torch.nn.functional.cosine_similarity(sparse_logits, dense_logits).item() > 0.9


def test_runs_and_gap_filling() -> None:
    assert runs_of(np.array([2, 3, 4, 8, 10, 11]), 5).tolist() == [[2, 3, 5], [8, 1, 8], [10, 2, 9]]
    uncached = np.ones(16, dtype=bool)
    uncached[6] = False
    assert fill_gaps(np.array([2, 4, 5, 7, 12]), uncached, 1).tolist() == [2, 3, 4, 5, 7, 12]


def decode(runtime, steps: int) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    runtime.truncate(0)
    logits = runtime.forward(IDS[:6])
    out = []
    for i in range(steps):
        logits = runtime.forward([IDS[6 + i % 10]])
        out.append(logits)
    return out


@pytest.mark.parametrize(("selector", "dtype"), [("lowrank", "fp32"), ("int8", "fp32"), ("int8", "fp16")])
def test_windowed_flash_equals_non_windowed(tiny, tmp_path: Path, selector: str, dtype: str) -> None:  # type: ignore[no-untyped-def]
    shape, state, calib = tiny
    base = with_overrides(RECIPES["flash"], selector=selector, predictor_rank=8,
                          budget_fraction=0.985, flash_dtype=dtype)
    reference = build(shape, state, calib, with_overrides(base, window=0), str(tmp_path))
    expected = decode(reference.runtime, 12)
    read_without_window = reference.store.bytes_read  # type: ignore[union-attr]
    reference.close()
    # (the thread-pool reader must fill the buffer exactly like Linux AIO)
    for window, max_gap, engine in [(1, 0, "aio"), (3, 0, "threads"), (4, 2, "aio")]:
        recipe = with_overrides(base, window=window, max_gap=max_gap, io_engine=engine)
        built = build(shape, state, calib, recipe, str(tmp_path))
        got = decode(built.runtime, 12)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), (window, max_gap)
        ffn = built.runtime.layers[1].ffn
        assert 0 < ffn.used <= ffn.capacity  # type: ignore[attr-defined]
        live = ffn.neuron_at[: ffn.used]  # type: ignore[attr-defined]
        assert (ffn.slot_of[live] == np.arange(ffn.used)).all()  # type: ignore[attr-defined]
        rows = ffn.buffer.tensor[: ffn.used, : shape.hidden]  # type: ignore[attr-defined]
        gate = state["model.layers.1.mlp.gate_proj.weight"].to(rows.dtype)
        assert torch.equal(rows, gate[torch.from_numpy(live)])
        if max_gap == 0:
            assert built.store.bytes_read < read_without_window  # type: ignore[union-attr]
        phases = built.store.phase_seconds  # type: ignore[union-attr]
        assert set(phases) == {"select", "read", "window", "compute"} and all(v > 0 for v in phases.values())
        built.close()


@pytest.mark.parametrize(("dtype", "atol"), [("fp32", 1e-4), ("fp16", 2e-2)])
def test_naive_flash_reads_everything_and_matches_dense(tiny, tmp_path: Path, dtype: str,  # type: ignore[no-untyped-def]
                                                        atol: float) -> None:
    shape, state, calib = tiny
    built = build(shape, state, calib,
                  with_overrides(RECIPES["flash-naive"], weights="fp32", flash_dtype=dtype), str(tmp_path))
    store = built.store
    before = store.bytes_read  # type: ignore[union-attr]
    logits = built.runtime.forward(IDS)
    assert store.bytes_read - before == shape.layers * shape.ffn * store.record  # type: ignore[union-attr]
    assert torch.allclose(logits, dense_runtime(shape, state).forward(IDS), atol=atol)
    assert built.runtime.weight_bytes < built.model_bytes
    built.close()


@pytest.mark.parametrize("name", ["int8", "int4", "wanda-2:4", "act-sparse50", "int8-act-sparse50",
                                  "flash", "flash-int8sel-fp16"])
def test_artifacts_round_trip(tiny, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    shape, state, calib = tiny
    recipe = with_overrides(RECIPES[name], group_size=32, predictor_rank=8, budget_fraction=0.985)
    built = build(shape, state, calib, recipe, str(tmp_path))
    expected = built.runtime.forward(IDS, last_only=False)
    artifacts.save(built, recipe, tmp_path, "tiny")
    built.close()
    loaded = artifacts.load(tmp_path)
    assert torch.equal(loaded.runtime.forward(IDS, last_only=False), expected)
    assert loaded.model_bytes == built.model_bytes
    loaded.close()


def test_generate_runs_ahead_of_the_consumer_and_stops_where_asked(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The model thread generates without a hop through the event loop per token; it
    stops after max_tokens, at an end token, or when the consumer stops, and what it
    evaluated ahead never changes the next request's tokens."""
    shape, state, calib = tiny
    backend = TorchBackend(build(shape, state, calib, RECIPES["int8"], str(tmp_path)), "int8", 1)

    async def tokens(limit: int, take: int | None = None) -> list[int]:
        out = []
        stream = backend.generate(TokenRequest(IDS[:8], TokenSampler(SamplingParams(max_tokens=limit))))
        async for item in stream:
            out.append(item.token)
            if take is not None and len(out) == take:
                break
        await stream.aclose()
        return out

    expected = asyncio.run(backend.draft(
        TokenRequest(IDS[:8], TokenSampler(SamplingParams(max_tokens=8))), 6, frozenset())).tokens
    assert asyncio.run(tokens(6)) == expected  # ends by itself after max_tokens
    assert asyncio.run(tokens(50, take=2)) == expected[:2]  # the consumer stops early
    assert asyncio.run(tokens(6)) == expected
    backend.end_ids = frozenset({expected[1]})
    assert asyncio.run(tokens(6)) == expected[:expected.index(expected[1]) + 1]  # an end token
    backend.close()


def test_cancelled_draft_stops_at_its_current_token(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A draft whose call is cancelled (a pipelined draft the router no longer needs)
    stops after the token in progress; the next draft is still right."""
    shape, state, calib = tiny
    backend = TorchBackend(build(shape, state, calib, RECIPES["int8"], str(tmp_path)), "int8", 1)
    greedy = TokenSampler(SamplingParams(max_tokens=64))
    steps = []
    original = backend.model.evaluate

    def spy(batch):  # type: ignore[no-untyped-def]
        steps.append(len(batch))
        return original(batch)

    backend.model.evaluate = spy  # type: ignore[method-assign]

    async def cancel_one() -> int:
        task = asyncio.ensure_future(backend.draft(TokenRequest(IDS[:8], greedy), 60, frozenset()))
        while len(steps) < 3:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        at_cancel = len(steps)
        await asyncio.sleep(0.3)
        return at_cancel

    at_cancel = asyncio.run(cancel_one())
    assert len(steps) <= at_cancel + 1  # at most the token in progress, not the 60
    after = asyncio.run(backend.draft(TokenRequest(IDS[:8] + [5], greedy), 3, frozenset()))
    fresh = TorchBackend(build(shape, state, calib, RECIPES["int8"], str(tmp_path)), "int8", 1)
    assert asyncio.run(fresh.draft(TokenRequest(IDS[:8] + [5], greedy), 3, frozenset())).tokens == after.tokens
    backend.close()
    fresh.close()


def test_backend_drafts_reuse_prefix_and_roll_back(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shape, state, calib = tiny
    backend = TorchBackend(build(shape, state, calib, RECIPES["int8"], str(tmp_path)), "int8", 1)
    greedy = TokenSampler(SamplingParams(max_tokens=8))
    first = asyncio.run(backend.draft(TokenRequest(IDS[:8], greedy), 4, frozenset()))
    assert first.cached_tokens == 0 and len(first.tokens) == 4
    # The cloud accepted 2 of 4 and appended its own token: only the new tail is computed.
    accepted = IDS[:8] + first.tokens[:2] + [7]
    second = asyncio.run(backend.draft(TokenRequest(accepted, greedy), 3, frozenset()))
    assert second.cached_tokens == 10 and second.computed_tokens == 1 + 2
    fresh = TorchBackend(build(shape, state, calib, RECIPES["int8"], str(tmp_path)), "int8", 1)
    assert asyncio.run(fresh.draft(TokenRequest(accepted, greedy), 3, frozenset())).tokens == second.tokens
    sampled = TokenSampler(SamplingParams(max_tokens=8, temperature=0.8, top_k=20, seed=3))
    third = asyncio.run(backend.draft(TokenRequest(accepted, sampled), 2, frozenset(), want_distributions=True))
    assert third.distributions is not None and len(third.distributions) == 2
    assert abs(float(third.distributions[0].sum()) - 1.0) < 1e-4
    assert third.probs[0] == pytest.approx(float(third.distributions[0][third.tokens[0]]), rel=1e-5)
    backend.close()
    fresh.close()
