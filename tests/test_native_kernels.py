"""The native fp32 kernels (shared/csrc): the matmul gives F.linear's products at every
shape (rows, columns and lengths that fill no tile or vector), the add-and-norm torch's
residual add and RMSNorm, silu-times-up torch's, RoPE transformers' rotation bit for bit,
paged attention SDPA's over each row's causal keys, each row independent of the rows
beside it; a decode step in one native call is the op-by-op step bit for bit; where they
cannot run (switched off, a failed build), None with the reason while oneDNN serves; the
cloud bench times both kernels on the same weights."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tandem.shared import native
from tandem.shared.linear import Linear

needs_native = pytest.mark.skipif(native.unavailable_reason() is not None,
                                  reason=f"native kernels: {native.unavailable_reason()}")


def product(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    kernel = native.kernels()
    assert kernel is not None
    return kernel(x, kernel.pack(w), bias, w.shape[0])


@needs_native
@pytest.mark.parametrize("rows, out_features, in_features",
                         [(1, 4, 16), (3, 7, 5), (5, 33, 577), (37, 130, 1536), (2, 1, 1)])
def test_it_computes_f_linears_products(rows: int, out_features: int, in_features: int) -> None:
    g = torch.Generator().manual_seed(rows * out_features + in_features)
    x = torch.randn(rows, in_features, generator=g)
    w = torch.randn(out_features, in_features, generator=g)
    b = torch.randn(out_features, generator=g)
    for bias in (None, b):
        want = F.linear(x.double(), w.double(), None if bias is None else bias.double())
        torch.testing.assert_close(product(x, w, bias).double(), want, rtol=1e-5, atol=1e-4)
    # strided views of x and W are read as their values
    wide = torch.randn(rows, in_features + 3, generator=g)
    torch.testing.assert_close(product(wide[:, :in_features], w.t().contiguous().t(), None),
                               F.linear(wide[:, :in_features], w), rtol=1e-5, atol=1e-4)


@needs_native
def test_a_row_is_the_same_among_any_rows() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(131, 580, generator=g)
    x = torch.randn(41, 580, generator=g)
    b = torch.randn(131, generator=g)
    full = product(x, w, b)
    for start, stop in [(0, 1), (0, 3), (5, 6), (2, 11), (9, 41), (40, 41)]:
        assert torch.equal(product(x[start:stop], w, b), full[start:stop]), (start, stop)
    many = torch.randn(250, 580, generator=g)  # rows in more than one block of 96
    assert torch.equal(product(many, w, b)[200:203], product(many[200:203], w, b))


def test_switched_off_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert native.unavailable_reason() == f"{native.ENV_SWITCH}=0"


@needs_native
def test_a_failed_build_leaves_onednn_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "matmul.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(native, "SOURCES", [broken])
    monkeypatch.setenv("TANDEM_CACHE_DIR", str(tmp_path / "cache"))
    native.kernels.cache_clear()
    try:
        with caplog.at_level(logging.INFO):
            assert native.kernels() is None
            assert Linear(torch.randn(8, 16)).kernel != "native"
        reasons = [r.fields["reason"] for r in caplog.records if hasattr(r, "fields")]
        assert any(r.startswith("the build failed") and "error" in r for r in reasons)
    finally:
        native.kernels.cache_clear()


@needs_native
def test_subnormal_inputs_count_as_zero_and_torch_keeps_its_own_arithmetic() -> None:
    # Subnormals would take the slow path of the CPU (~150x); the kernel flushes them in
    # its threads only, and leaves the floating-point mode of the calling thread as it was.
    g = torch.Generator().manual_seed(5)
    w = torch.randn(70, 40, generator=g)
    tiny = torch.full((3, 40), 1e-39)
    assert torch.equal(product(tiny, w, None), torch.zeros(3, 70))
    assert (torch.tensor([1e-37]) / 1e3).item() != 0.0  # still a subnormal, not 0


@needs_native
def test_add_rms_norm_is_the_residual_add_and_torchs_norm() -> None:
    kernels = native.kernels()
    assert kernels is not None
    g = torch.Generator().manual_seed(7)
    x, delta = torch.randn(11, 579, generator=g), torch.randn(11, 579, generator=g)
    w = torch.randn(579, generator=g)
    stream = x.clone()
    h = kernels.add_rms_norm(stream, delta, w, 1e-5)
    torch.testing.assert_close(stream, x + delta)  # the residual stream, updated in place
    torch.testing.assert_close(h, F.rms_norm(x + delta, (579,), w, 1e-5), rtol=1e-5, atol=1e-5)
    alone = kernels.add_rms_norm(x[4:5].clone(), delta[4:5], w, 1e-5)
    assert torch.equal(alone, h[4:5])  # a row's result does not depend on the rows beside it
    torch.testing.assert_close(kernels.add_rms_norm(x.clone(), None, w, 1e-5),
                               F.rms_norm(x, (579,), w, 1e-5), rtol=1e-5, atol=1e-5)


@needs_native
def test_the_cloud_bench_times_both_kernels_on_the_same_weights(tiny_model_dir: Path) -> None:
    from tandem.cloud import bench
    from tandem.cloud.llama_model import LlamaForward
    from tandem.shared.model_loader import load_causal_lm
    from tandem.shared.models import resolve_model

    model = load_causal_lm(resolve_model(str(tiny_model_dir)), "float32")
    on_native, on_onednn = LlamaForward(model), LlamaForward(model, allow_native=False)
    assert {m.kernel for m in on_native.matmuls()} == {"native"}
    assert {m.kernel for m in on_onednn.matmuls()} <= {"onednn", "torch"}
    figures = bench.matmul_kernels_ms(model, on_native, rows=(1, 3), repeats=2)
    assert figures is not None and figures["rows"] == [1, 3]
    assert all(ms > 0 for ms in figures["native_ms"] + figures["onednn_ms"])
    assert bench.matmul_kernels_ms(model, on_onednn) is None  # the engine runs no native


def paged_cache(lengths: list[int], kv_heads: int, hd: int, block_size: int,
                g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Random K/V caches and, per sequence, a shuffled block table covering its keys."""
    need = [-(-n // block_size) for n in lengths]
    order = torch.randperm(sum(need) + 3, generator=g).tolist()  # blocks out of order
    tables, at = [], 0
    for n in need:
        tables.append(order[at:at + n])
        at += n
    slots = (sum(need) + 3) * block_size
    k = torch.randn(slots, kv_heads, hd, generator=g)
    return k, torch.randn(slots, kv_heads, hd, generator=g), tables


def gathered(cache: torch.Tensor, table: list[int], n: int, block_size: int) -> torch.Tensor:
    slots = [table[j // block_size] * block_size + j % block_size for j in range(n)]
    return cache[torch.tensor(slots)]  # [n, Hkv, hd]


@needs_native
@pytest.mark.parametrize("heads, kv_heads, hd", [(9, 3, 64), (4, 2, 16), (4, 4, 24)])
@pytest.mark.parametrize("lengths, queried", [([1, 40, 300, 17], 3), ([300], 9)])
def test_paged_attention_is_sdpa_over_each_rows_causal_keys(heads: int, kv_heads: int,
                                                            hd: int, lengths: list[int],
                                                            queried: int) -> None:
    """Several sequences, or one verify pass alone (its rows split among the threads)."""
    kernels = native.kernels()
    assert kernels is not None
    g = torch.Generator().manual_seed(11)
    block_size = 16
    k_cache, v_cache, tables = paged_cache(lengths, kv_heads, hd, block_size, g)
    # Sequence s queries its last min(n, queried) positions (a verify pass; one: a decode
    # step).
    rows, starts, keys, flat, expected = [], [], [], [], []
    for table, n in zip(tables, lengths):
        for position in range(max(0, n - queried), n):
            rows.append(len(rows))
            starts.append(len(flat))
            keys.append(position + 1)
        flat += table
    q = torch.randn(len(rows), heads, hd, generator=g)
    for r, (table, n) in enumerate((t, key) for t, n in zip(tables, lengths)
                                   for key in range(max(0, n - queried) + 1, n + 1)):
        k, v = (gathered(c, table, n, block_size).transpose(0, 1) for c in (k_cache, v_cache))
        expected.append(F.scaled_dot_product_attention(
            q[r][:, None], k, v, enable_gqa=heads != kv_heads)[:, 0])
    out = torch.zeros_like(q)
    index = [torch.tensor(v, dtype=torch.long) for v in (flat, rows, starts, keys)]
    kernels.paged_attention(q, k_cache, v_cache, index[0], block_size, *index[1:], out,
                            hd ** -0.5)
    torch.testing.assert_close(out, torch.stack(expected), rtol=1e-5, atol=1e-5)
    # A row alone computes what it computed among the others (batch invariance).
    alone = torch.zeros_like(q)
    for r in (5, len(rows) - 1):
        kernels.paged_attention(q, k_cache, v_cache, index[0], block_size, index[1][r:r + 1],
                                index[2][r:r + 1], index[3][r:r + 1], alone, hd ** -0.5)
        assert torch.equal(alone[r], out[r])


@needs_native
@pytest.mark.parametrize("hd", [64, 16])
def test_rope_kv_write_rotates_as_torch_and_writes_the_cache(hd: int) -> None:
    kernels = native.kernels()
    assert kernels is not None
    g = torch.Generator().manual_seed(13)
    T, heads, kv_heads = 5, 6, 2
    qkv = torch.randn(T, (heads + 2 * kv_heads) * hd, generator=g)
    angles = torch.rand(T, hd // 2, generator=g) * 100
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    k_cache, v_cache = torch.zeros(20, kv_heads, hd), torch.zeros(20, kv_heads, hd)
    slots = torch.tensor([3, 17, 0, 8, 9])
    q = kernels.rope_kv_write(qkv, cos, sin, k_cache, v_cache, slots, heads)
    x = qkv.view(T, heads + 2 * kv_heads, hd)
    half = hd // 2
    rotated = (x * cos[:, None] + torch.cat([-x[..., half:], x[..., :half]], -1)
               * sin[:, None])  # transformers' apply_rotary_pos_emb
    assert torch.equal(q, rotated[:, :heads])  # the same roundings, bit for bit
    assert torch.equal(k_cache[slots], rotated[:, heads:heads + kv_heads])
    assert torch.equal(v_cache[slots], x[:, heads + kv_heads:])
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[slots] = False
    assert not k_cache[untouched].any() and not v_cache[untouched].any()


@needs_native
def test_silu_mul_is_torchs_silu_times_up() -> None:
    kernels = native.kernels()
    assert kernels is not None
    gate_up = torch.randn(7, 2 * 300, generator=torch.Generator().manual_seed(17)) * 8
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(kernels.silu_mul(gate_up), F.silu(gate) * up,
                               rtol=2e-6, atol=1e-6)


@needs_native
def test_a_decode_step_in_one_native_call_is_the_op_by_op_step(tiny_model_dir: Path) -> None:
    from tandem.cloud.llama_model import LlamaForward, PagedQueries, StepInput
    from tandem.shared.model_loader import load_causal_lm
    from tandem.shared.models import resolve_model

    forward = LlamaForward(load_causal_lm(resolve_model(str(tiny_model_dir)), "float32"))
    assert forward.decoder is not None
    g = torch.Generator().manual_seed(19)
    block_size, blocks = 4, 12
    shape = (forward.num_layers, blocks * block_size, forward.num_kv_heads, forward.head_dim)
    k_cache, v_cache = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    # Sequence A (blocks 5, 2, 9) decodes position 9; B (blocks 0, 7) verifies 5..7.
    positions = [9, 5, 6, 7]
    slots = [9 * block_size + 1, 7 * block_size + 1, 7 * block_size + 2, 7 * block_size + 3]
    step = StepInput(torch.tensor([5, 17, 300, 41]), torch.tensor(positions),
                     torch.tensor(slots), [], torch.arange(4),
                     PagedQueries(torch.arange(4), torch.tensor([0, 3, 3, 3]),
                                  torch.tensor(positions) + 1, torch.tensor([5, 2, 9, 0, 7]),
                                  block_size))
    caches = (k_cache.clone(), v_cache.clone())
    fused = forward.forward(step, *caches)
    forward.decoder = None  # now op by op: the same kernels one call at a time
    op_by_op = forward.forward(step, k_cache, v_cache)
    assert torch.equal(fused, op_by_op)
    assert torch.equal(caches[0], k_cache) and torch.equal(caches[1], v_cache)
