"""Matmuls with weights prepared once for the kernel that serves them best, one kernel
for every batch size (the cloud engine's, and the edge torch runtime's dense layers).

fp32 goes to Tandem's own AVX-512 kernel (native.py) where it runs: it streams the
small decode matrices faster than oneDNN and costs a plain function call. Elsewhere, and
for bf16, oneDNN with a pre-packed weight: on CPU, MKL's fp32 GEMM (what F.linear calls)
is slow at the small row counts of decoding (on this machine kind a step over all of
SmolLM2's weights took 56 ms for 9 rows where pre-packed oneDNN took 15 ms, and 30 ms
against 13 ms for one row: MKL's one-row product runs on one core). Packing happens once
at load; the packed copy replaces the dense one the forward would otherwise keep.

Batch invariance: a token's output row should not depend on how many rows share the
call, so that a speculative verify pass (k+1 rows) computes exactly what k+1 one-row
decode steps would. The native kernel is invariant by construction. oneDNN's kernels are
invariant for two rows and more, but may take a different one-row path for some shapes;
each weight is probed once at load, and where one row differs, one-row calls are padded
to two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tandem.shared import native

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                            "_linear_pointwise")


class Linear:
    """y = x W^T (+ b) for a [out, in] weight: the native kernel for fp32 where it runs
    (unless ``allow_native`` is False), else oneDNN where it can, else F.linear."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 allow_native: bool = True) -> None:
        self.out_features, self.in_features = weight.shape
        self.nbytes = weight.numel() * weight.element_size()
        dtype = weight.dtype
        self.native = native.kernels() if allow_native and dtype == torch.float32 else None
        self.packed = (self.native is None and weight.dtype in PACKABLE_DTYPES
                       and onednn_available())
        if self.native is not None:
            weight = self.native.pack(weight)
            bias = None if bias is None else bias.contiguous()
        elif self.packed:
            weight = torch.ops.mkldnn._reorder_linear_weight(weight)
        self.weight, self.bias = weight, bias
        self.pad_single_row = self.packed and not self._single_row_invariant(dtype)

    @property
    def kernel(self) -> str:
        return "native" if self.native is not None else "onednn" if self.packed else "torch"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.native is not None:
            return self.native(x, self.weight, self.bias, self.out_features)
        if not self.packed:
            return F.linear(x, self.weight, self.bias)
        if self.pad_single_row and x.shape[0] == 1:
            return self._packed(x.expand(2, -1))[:1]
        return self._packed(x)

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias,
                                                  "none", [None], "")

    @torch.inference_mode()
    def _single_row_invariant(self, dtype: torch.dtype) -> bool:
        """Whether one row alone gives bit-for-bit what it gives among other rows."""
        probe = torch.randn(4, self.in_features, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float32).to(dtype)
        return bool(torch.equal(self._packed(probe[:1]), self._packed(probe)[:1]))
