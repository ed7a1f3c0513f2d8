"""W8A8 on the torch edge runtime: SmoothQuant's smoothing is the same function before
quantization, the INT8 paths stay close to fp32 (a tiny random-weight model's greedy
tokens), LLM.int8()'s outlier columns stay exact, artifacts round-trip, bad options are
clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tandem.edge import artifacts
from tandem.edge.activation_quant import (W8A8Linear, outlier_columns, smoothing_factors,
                                          smoothquant_scale)
from tandem.edge.compress.recipes import RECIPES, Recipe, build
from tandem.edge.torch_model import dense_runtime

IDS = [5, 17, 300, 42, 9, 1000, 77, 8, 123, 4567, 11, 12, 13, 14, 15, 16]


def outlier_inputs(rows: int = 256, width: int = 64) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(rows, width) * (1 + 40 * (torch.arange(width) % 16 == 0))


def test_smoothing_leaves_the_fp32_function_unchanged_before_quantization() -> None:
    weight, inputs = torch.randn(96, 64), outlier_inputs()
    for alpha in (0.0, 0.5, 0.8, 1.0):
        s = smoothing_factors(weight, inputs, alpha)
        torch.testing.assert_close((inputs / s) @ (weight * s).T, inputs @ weight.T,
                                   rtol=1e-4, atol=1e-3)


def test_smoothquant_and_outlier_columns_cut_the_error_of_per_token_int8() -> None:
    weight, inputs = torch.randn(96, 64), outlier_inputs()
    exact = inputs @ weight.T
    error = lambda linear: ((linear(inputs) - exact).norm() / exact.norm()).item()  # noqa: E731
    naive = error(W8A8Linear.from_dense(weight))
    scale, alpha = smoothquant_scale(weight, inputs)
    smooth = error(W8A8Linear.from_dense(weight, input_scale=scale))
    outliers = outlier_columns(inputs)
    assert outliers.tolist() == [0, 16, 32, 48]
    mixed = error(W8A8Linear.from_dense(weight, outliers=outliers))
    assert 0.0 <= alpha <= 1.0
    assert smooth < naive and mixed < naive and mixed < 0.02


def test_w8a8_runtimes_follow_the_fp32_greedy_tokens(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Teacher-forced argmax over 16 positions of a tiny random model (whose logits are
    nearly flat, the hard case): each W8A8 path agrees with fp32 on at least 14 of 16,
    and its logits stay within 5 % (relative norm)."""
    shape, state, calib = tiny
    reference = dense_runtime(shape, state).forward(IDS, last_only=False)
    for name in ("w8a8", "w8a8-smoothquant", "w8a8-llm-int8"):
        built = build(shape, state, calib, RECIPES[name], str(tmp_path / name))
        logits = built.runtime.forward(IDS, last_only=False)
        agree = (logits.argmax(-1) == reference.argmax(-1)).sum().item()
        relative = ((logits - reference).norm() / reference.norm()).item()
        assert agree >= 14 and relative < 0.05, (name, agree, relative)


@pytest.mark.parametrize("name", ["w8a8-smoothquant", "w8a8-llm-int8"])
def test_w8a8_artifacts_round_trip(tiny, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    shape, state, calib = tiny
    # the tiny model's activations are small: a threshold that makes some columns outliers
    typical = float(calib.inputs[(0, "attn")].abs().amax(dim=0).median())
    recipe = RECIPES[name] if name != "w8a8-llm-int8" else Recipe(weights="w8a8",
                                                                  outlier_threshold=typical)
    built = build(shape, state, calib, recipe, str(tmp_path))
    expected = built.runtime.forward(IDS, last_only=False)
    artifacts.save(built, recipe, tmp_path, "tiny")
    loaded = artifacts.load(tmp_path)
    assert torch.equal(loaded.runtime.forward(IDS, last_only=False), expected)
    assert loaded.model_bytes == built.model_bytes
    if name == "w8a8-llm-int8":
        assert loaded.runtime.layers[0].q.outliers is not None


def test_a_linear_with_every_column_an_outlier_is_exact() -> None:
    weight, inputs = torch.randn(8, 4), torch.randn(3, 4) * 10
    linear = W8A8Linear.from_dense(weight, outliers=outlier_columns(inputs, 1e-3))
    torch.testing.assert_close(linear(inputs), inputs @ weight.T)


def test_bad_w8a8_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="alpha must be in"):
        Recipe(weights="w8a8", smoothquant=True, smooth_alpha=1.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        smoothing_factors(torch.ones(2, 2), torch.ones(2, 2), -0.1)
    with pytest.raises(ValueError, match="unknown weight format"):
        Recipe(weights="int3")
    with pytest.raises(ValueError, match="W8A8 options"):
        Recipe(weights="int8", smoothquant=True)
    with pytest.raises(ValueError, match="outlier threshold"):
        outlier_columns(torch.ones(2, 2), 0.0)
