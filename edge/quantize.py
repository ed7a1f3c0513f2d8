"""Weight quantization for the torch runtime: INT8 per-output-channel symmetric and INT4
group-wise asymmetric with AWQ-style activation-aware input scaling.

On this CPU (AVX2, no VNNI path in torch) the fastest correct way to multiply by quantized
weights is to widen them to fp32 in a reused scratch buffer and call the dense kernel, so
these formats save memory, not time (the benchmark reports both).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_scratch: dict[tuple[int, int], torch.Tensor] = {}
CHUNK_ROWS = 2048  # largest block of rows widened to fp32 at once


def _scratch_for(shape: tuple[int, int]) -> torch.Tensor:
    """One fp32 buffer per weight shape, shared by all layers (decode is sequential)."""
    buf = _scratch.get(shape)
    if buf is None:
        buf = _scratch[shape] = torch.empty(shape)
    return buf


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric: weight[out, in] ~ q[out, in] * scale[out]."""
    scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale.float()


class Int8Linear:
    kind = "int8"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        self.q, self.scale = q.contiguous(), scale.contiguous()  # [out, in] int8, [out]
        self._q_np = self.q.numpy()

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> Int8Linear:
        return cls(*quantize_int8(weight))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.q.shape[0]
        if rows <= CHUNK_ROWS:
            return F.linear(x, self._widened(0, rows)) * self.scale
        # Widen at most CHUNK_ROWS rows at a time so the fp32 scratch stays small ([C, in]).
        out = torch.empty(*x.shape[:-1], rows)
        for r0 in range(0, rows, CHUNK_ROWS):
            r1 = min(rows, r0 + CHUNK_ROWS)
            out[..., r0:r1] = F.linear(x, self._widened(r0, r1))
        return out * self.scale  # per-row scale after the matmul

    def _widened(self, r0: int, r1: int) -> torch.Tensor:
        buf = _scratch_for((CHUNK_ROWS, self.q.shape[1]))[: r1 - r0]
        np.copyto(buf.numpy(), self._q_np[r0:r1], casting="unsafe")  # int8 -> fp32 in place
        return buf

    @property
    def nbytes(self) -> int:
        return self.q.numel() + self.scale.numel() * 4

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"q": self.q, "scale": self.scale}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], meta: dict[str, object]) -> Int8Linear:
        return cls(t["q"], t["scale"])


def quantize_int4(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric per group of ``group`` input channels: w ~ q * scale + minimum, q in [0, 15].
    Returns (packed [out, in/2] uint8, scale [out, in/group], minimum [out, in/group])."""
    out, inp = weight.shape
    if inp % group or group % 2:
        raise ValueError(f"group size {group} must be even and divide the input width {inp}")
    grouped = weight.view(out, inp // group, group)
    lo, hi = grouped.amin(-1).half().float(), grouped.amax(-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-6).half().float()  # fp16-representable
    q = torch.round((grouped - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    q = q.view(out, inp)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    # fp16 scale and minimum: 0.625 bytes per weight at group 32 instead of 0.75
    return packed.contiguous(), scale.half(), lo.half()


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
    out, half = packed.shape
    group = 2 * half // scale.shape[1]
    q = torch.stack([packed & 15, packed >> 4], dim=-1).view(out, -1, group).float()
    return (q * scale.float()[..., None] + minimum.float()[..., None]).view(out, 2 * half)


class Int4Linear:
    """INT4 weights of W * diag(s); inputs are divided by s (AWQ), so y = (x / s) (W s)^T."""

    kind = "int4"

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor,
                 input_scale: torch.Tensor | None = None) -> None:
        self.packed, self.scale, self.minimum = packed, scale, minimum
        self.inv_input_scale = None if input_scale is None else (1.0 / input_scale).float()
        self.input_scale = input_scale

    @classmethod
    def from_dense(cls, weight: torch.Tensor, group: int,
                   input_scale: torch.Tensor | None = None) -> Int4Linear:
        scaled = weight if input_scale is None else weight * input_scale[None, :]
        return cls(*quantize_int4(scaled, group), input_scale=input_scale)

    def effective_weight(self) -> torch.Tensor:
        w = dequantize_int4(self.packed, self.scale, self.minimum)
        return w if self.inv_input_scale is None else w * self.inv_input_scale[None, :]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_input_scale is not None:
            x = x * self.inv_input_scale
        return F.linear(x, dequantize_int4(self.packed, self.scale, self.minimum))

    @property
    def nbytes(self) -> int:
        extra = 0 if self.input_scale is None else self.input_scale.numel() * 4
        return self.packed.numel() + (self.scale.numel() + self.minimum.numel()) * 2 + extra

    def tensors(self) -> dict[str, torch.Tensor]:
        t = {"packed": self.packed, "scale": self.scale, "minimum": self.minimum}
        if self.input_scale is not None:
            t["input_scale"] = self.input_scale
        return t

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], meta: dict[str, object]) -> Int4Linear:
        return cls(t["packed"], t["scale"], t["minimum"], t.get("input_scale"))


AWQ_ALPHAS = tuple(i / 10 for i in range(11))


def awq_input_scale(weight: torch.Tensor, inputs: torch.Tensor, group: int) -> torch.Tensor:
    """Per-input-channel scale s = mean|x|^alpha, alpha chosen on the calibration inputs
    ([N, in]) to minimise the INT4 output error ||x W^T - (x/s) Q(W s)^T|| (AWQ, §3.2)."""
    magnitude = inputs.abs().mean(dim=0).clamp(min=1e-6)  # [in]
    reference = inputs @ weight.T  # [N, out]
    best, best_error = torch.ones_like(magnitude), float("inf")
    for alpha in AWQ_ALPHAS:
        s = magnitude.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()  # keep the scales centred around 1
        error = (reference - inputs @ Int4Linear.from_dense(weight, group, s).effective_weight().T
                 ).pow(2).mean().item()
        if error < best_error:
            best, best_error = s, error
    return best


class Int8Embedding:
    """Tied embedding / LM head stored as INT8 rows with a per-row scale."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        self.head = Int8Linear(q, scale)

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> Int8Embedding:
        return cls(*quantize_int8(weight))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head.q[ids].float() * self.head.scale[ids, None]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)

    @property
    def nbytes(self) -> int:
        return self.head.nbytes


LINEAR_KINDS = {"int8": Int8Linear, "int4": Int4Linear}
