"""The cloud's matmuls, on each kernel (native where it runs, and oneDNN): the same
products as F.linear, each row independent of the rows it shares a call with (decode and
verify compute the same numbers), and the OpenMP wait policy set before the libraries that
read it load."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tandem.shared import native
from tandem.shared.linear import Linear, onednn_available
from tandem.shared.openmp import set_openmp_wait

# SmolLM2-135M's projections: q|k|v, o, gate|up, down (K = 1536 takes a one-row path of
# its own in oneDNN, which the probe must catch), and a small LM head.
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536), (4096, 576)]
KERNELS = ["native", "onednn"]


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    """The kernel fp32 Linears are built on in this test."""
    if request.param == "native" and native.unavailable_reason():
        pytest.skip(f"native matmul: {native.unavailable_reason()}")
    if request.param == "onednn":
        monkeypatch.setattr(native, "kernels", lambda: None)
    return request.param if request.param == "native" or onednn_available() else "torch"


@pytest.mark.parametrize("out_features, in_features", SHAPES)
def test_linear_matches_f_linear(out_features, in_features, kernel):
    g = torch.Generator().manual_seed(out_features + in_features)
    w = torch.randn(out_features, in_features, generator=g)
    b = torch.randn(out_features, generator=g)
    x = torch.randn(7, in_features, generator=g)
    for bias in (None, b):
        layer = Linear(w, bias)
        assert layer.kernel == kernel
        torch.testing.assert_close(layer(x), F.linear(x, w, bias), rtol=1e-4, atol=1e-4)
    assert layer.nbytes == w.numel() * 4 and (layer.out_features, layer.in_features) == w.shape


@pytest.mark.parametrize("out_features, in_features", SHAPES)
def test_a_row_is_computed_the_same_in_any_batch(out_features, in_features, kernel):
    g = torch.Generator().manual_seed(1)
    layer = Linear(torch.randn(out_features, in_features, generator=g))
    x = torch.randn(33, in_features, generator=g)
    full = layer(x)
    for rows in (1, 2, 5, 9, 16, 32):
        assert torch.equal(layer(x[:rows]), full[:rows]), rows
    assert torch.equal(layer(x[7:8]), full[7:8])  # one row from the middle, alone


def test_unpackable_dtypes_use_f_linear():
    w = torch.randn(64, 32, dtype=torch.float16)
    layer = Linear(w)
    assert not layer.packed
    x = torch.randn(3, 32, dtype=torch.float16)
    assert torch.equal(layer(x), F.linear(x, w))


def _policy_after(spin_count, env):
    code = ("import os; from tandem.shared.openmp import set_openmp_wait; "
            f"set_openmp_wait({spin_count}); "
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                            capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_openmp_wait_policy_is_set_before_torch_loads():
    assert _policy_after(0, {}) == ["PASSIVE", "None"]
    assert _policy_after(50000, {}) == ["ACTIVE", "50000"]
    assert _policy_after(50000, {"OMP_WAIT_POLICY": "PASSIVE"}) == ["PASSIVE", "50000"]
    with pytest.raises(RuntimeError, match="before"):
        set_openmp_wait(1)  # this process has torch loaded already
