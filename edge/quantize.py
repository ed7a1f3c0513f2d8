"""Weight quantization for the torch runtime: INT8 per-output-channel symmetric and INT4
group-wise asymmetric with AWQ-style activation-aware input scaling.

INT8 products run in torch's weight-only INT8 kernel (``_weight_int8pack_mm``) with bf16
activations: on this CPU it is 3-6x faster than widening the weights to fp32 for MKL, and
costs +0.3% perplexity on SmolLM2 (measured). INT4 runs in torch's INT4 kernel likewise.
"""

from __future__ import annotations

import torch

ALIGN = 64  # the INT8 kernel loads weight rows with aligned vector loads
INT4_GROUPS = (32, 64, 128, 256)  # group sizes the INT4 kernel supports


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric: weight[out, in] ~ q[out, in] * scale[out]."""
    scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale.float()


class Int8Linear:
    kind = "int8"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        q = q.contiguous()
        if q.data_ptr() % ALIGN:  # e.g. a tensor inside a loaded safetensors file
            q = q.clone()
        self.q, self.scale = q, scale.contiguous()  # [out, in] int8, [out]
        self._scale_bf16 = self.scale.to(torch.bfloat16)

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> Int8Linear:
        return cls(*quantize_int8(weight))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
        out = torch._weight_int8pack_mm(flat, self.q, self._scale_bf16)  # [N, out] bf16
        return out.float().view(*x.shape[:-1], self.q.shape[0])

    @property
    def nbytes(self) -> int:
        return self.q.numel() + self.scale.numel() * 4

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"q": self.q, "scale": self.scale}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], meta: dict[str, object]) -> Int8Linear:
        return cls(t["q"], t["scale"])


def quantize_int4(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric per group of ``group`` input channels: w ~ (q - 8) * scale + zero, q in
    [0, 15], scale and zero in bf16 (the INT4 kernel's format; 0.625 bytes per weight at
    group 32). Returns (packed [out, in/2] uint8, even channels in the low nibble;
    scale [out, in/group]; zero [out, in/group])."""
    out, inp = weight.shape
    if group not in INT4_GROUPS or inp % group:
        raise ValueError(f"group size {group} must be one of {INT4_GROUPS} (the INT4 kernel's) "
                         f"and divide the input width {inp}")
    grouped = weight.view(out, inp // group, group)
    lo, hi = grouped.amin(-1), grouped.amax(-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-6).to(torch.bfloat16)
    zero = (lo + 8 * scale.float()).to(torch.bfloat16)
    q = torch.round((grouped - zero.float()[..., None]) / scale.float()[..., None] + 8)
    return pack_int4(q.clamp(0, 15).to(torch.uint8).view(out, inp)), scale, zero


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[out, in] uint8 values in [0, 15] -> [out, in/2] nibbles, even channels low."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[out, in/2] nibbles -> [out, in] uint8 values in [0, 15]."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).view(packed.shape[0], -1)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    out, inp = packed.shape[0], 2 * packed.shape[1]
    q = unpack_int4(packed).view(out, scale.shape[1], -1).float()
    return ((q - 8) * scale.float()[..., None] + zero.float()[..., None]).view(out, inp)


class Int4Linear:
    """INT4 weights of W * diag(s); inputs are divided by s (AWQ), so y = (x / s) (W s)^T.

    Products run in torch's INT4 kernel (``_weight_int4pack_mm_for_cpu``, bf16 activations),
    100-200x faster than dequantizing per call on this CPU. Only the kernel's layout stays
    resident; the portable nibbles are recovered from it (exactly) to save the weights."""

    kind = "int4"

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                 input_scale: torch.Tensor | None = None) -> None:
        self.out_features, self.in_features = packed.shape[0], 2 * packed.shape[1]
        self.group = self.in_features // scale.shape[1]
        self.kernel_weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            unpack_int4(packed).to(torch.int32), 1)
        self.scale_zero = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()
        self.inv_input_scale = None if input_scale is None else (1.0 / input_scale).float()
        self.input_scale = input_scale

    @classmethod
    def from_dense(cls, weight: torch.Tensor, group: int,
                   input_scale: torch.Tensor | None = None) -> Int4Linear:
        scaled = weight if input_scale is None else weight * input_scale[None, :]
        return cls(*quantize_int4(scaled, group), input_scale=input_scale)

    def _matmul(self, x: torch.Tensor, scale_zero: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.kernel_weight, self.group, scale_zero)

    def packed(self) -> torch.Tensor:
        """The portable nibbles, read back through the kernel: with scale 1 and zero 8 it
        returns q itself for each row of an identity (small integers are exact in bf16)."""
        groups = self.in_features // self.group
        unit = torch.stack([torch.ones(groups, self.out_features),
                            torch.full((groups, self.out_features), 8.0)], dim=-1).to(torch.bfloat16)
        return pack_int4(self._matmul(torch.eye(self.in_features, dtype=torch.bfloat16), unit)
                         .t().to(torch.uint8))

    def effective_weight(self) -> torch.Tensor:
        scale, zero = self.scale_zero[..., 0].t(), self.scale_zero[..., 1].t()
        w = dequantize_int4(self.packed(), scale, zero)
        return w if self.inv_input_scale is None else w * self.inv_input_scale[None, :]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_input_scale is not None:
            x = x * self.inv_input_scale
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        return self._matmul(flat, self.scale_zero).float().view(*x.shape[:-1], self.out_features)

    @property
    def nbytes(self) -> int:
        extra = 0 if self.input_scale is None else self.input_scale.numel() * 4
        return self.kernel_weight.numel() + self.scale_zero.numel() * 2 + extra

    def tensors(self) -> dict[str, torch.Tensor]:
        t = {"packed": self.packed(), "scale": self.scale_zero[..., 0].t().contiguous(),
             "zero": self.scale_zero[..., 1].t().contiguous()}
        if self.input_scale is not None:
            t["input_scale"] = self.input_scale
        return t

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], meta: dict[str, object]) -> Int4Linear:
        if "zero" not in t:
            raise ValueError("INT4 weights in an older format (scale, minimum): rebuild the "
                             "artifact (tandem compress, or tandem bench edge --rebuild)")
        return cls(t["packed"], t["scale"], t["zero"], t.get("input_scale"))


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
