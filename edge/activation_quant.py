"""W8A8: INT8 weights *and* INT8 activations, so that the product runs in integer
arithmetic (``torch._int_mm``: int8 x int8 -> int32, VNNI/AMX kernels on this CPU) rather
than widening weights to floating point as the weight-only formats do.

Weights are quantized per output channel, activations per token (symmetric, dynamic). A few
input channels of a transformer's activations carry outliers two orders of magnitude above
the rest, which per-token INT8 cannot hold; the two remedies, both fitted on the shipped
calibration text:

- **SmoothQuant** (Xiao et al., 2023): per input channel j, s_j = max|X_j|^α / max|W_j|^(1-α);
  the linear computes (X / s)(W s)^T — the same function in exact arithmetic — which moves
  the activations' range into the weights. α is chosen per linear, on its calibration
  inputs, as the one with the least output error after quantization (or fixed).
- **LLM.int8()** (Dettmers et al., 2022): input channels whose calibration inputs exceed
  a magnitude threshold (6, the paper's) stay in floating point, their weight columns too;
  the rest is INT8. LLM.int8() picks the columns per batch at run time; here they are fixed
  at calibration, which keeps the INT8 weight one contiguous matrix.
"""

from __future__ import annotations

import torch

from tandem.edge.quantize import quantize_int8

SMOOTH_ALPHAS = tuple(i / 10 for i in range(11))
OUTLIER_THRESHOLD = 6.0
_RANGE_FLOOR = 1e-5  # a channel that never varies still gets a finite smoothing factor


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric INT8 (the weights' quantizer, per token): x[N, K] ~ q * scale[N, 1]."""
    q, scale = quantize_int8(x)
    return q, scale[:, None]


def fake_w8a8(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x W^T with both operands rounded to INT8 as W8A8Linear rounds them (in float)."""
    q, scale = quantize_int8(weight)
    xq, xs = quantize_rows(x)
    return (xq.float() * xs) @ (q.float() * scale[:, None]).T


def check_alpha(alpha: float | None) -> None:
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")


def smoothing_factors(weight: torch.Tensor, inputs: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_j|^(1-α) for every input channel j ([in])."""
    check_alpha(alpha)
    x_range = inputs.abs().amax(dim=0).clamp(min=_RANGE_FLOOR)
    w_range = weight.abs().amax(dim=0).clamp(min=_RANGE_FLOOR)
    return (x_range.pow(alpha) / w_range.pow(1.0 - alpha)).clamp(min=_RANGE_FLOOR)


def smoothquant_scale(weight: torch.Tensor, inputs: torch.Tensor, alpha: float | None = None,
                      rows: int = 256) -> tuple[torch.Tensor, float]:
    """The smoothing factors and their α: ``alpha``, or the α of SMOOTH_ALPHAS whose W8A8
    output error on (up to ``rows`` of) the calibration inputs is least."""
    check_alpha(alpha)
    if alpha is not None:
        return smoothing_factors(weight, inputs, alpha), alpha
    sample = inputs[:rows]
    reference = sample @ weight.T
    best: tuple[float, torch.Tensor, float] | None = None
    for candidate in SMOOTH_ALPHAS:
        s = smoothing_factors(weight, sample, candidate)
        error = (reference - fake_w8a8(sample / s, weight * s)).pow(2).mean().item()
        if best is None or error < best[0]:
            best = (error, s, candidate)
    assert best is not None
    return smoothing_factors(weight, inputs, best[2]), best[2]


def outlier_columns(inputs: torch.Tensor, threshold: float = OUTLIER_THRESHOLD) -> torch.Tensor:
    """Input channels whose calibration inputs reach ``threshold`` in magnitude."""
    if threshold <= 0:
        raise ValueError(f"the LLM.int8() outlier threshold must be > 0, got {threshold}")
    return torch.nonzero(inputs.abs().amax(dim=0) >= threshold).flatten()


class W8A8Linear:
    """y = x W^T with INT8 weights and per-token INT8 activations, an integer product, and
    optionally SmoothQuant's input smoothing (``input_scale`` s: the weight holds W s and
    inputs are divided by s) or LLM.int8()'s floating-point ``outliers`` columns."""

    kind = "w8a8"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor,
                 input_scale: torch.Tensor | None = None, outliers: torch.Tensor | None = None,
                 outlier_weight: torch.Tensor | None = None) -> None:
        self.q, self.scale = q.contiguous(), scale.float().contiguous()  # [out, in'], [out]
        self.input_scale = input_scale
        self.inv_input_scale = None if input_scale is None else (1.0 / input_scale).float()
        self.outliers = outliers if outliers is not None and len(outliers) else None
        self.outlier_weight = outlier_weight if self.outliers is not None else None
        self.out_features = self.q.shape[0]
        self.in_features = self.q.shape[1] + (0 if self.outliers is None else len(self.outliers))
        self.inliers = None
        if self.outliers is not None:
            keep = torch.ones(self.in_features, dtype=torch.bool)
            keep[self.outliers] = False
            self.inliers = torch.nonzero(keep).flatten()

    @classmethod
    def from_dense(cls, weight: torch.Tensor, input_scale: torch.Tensor | None = None,
                   outliers: torch.Tensor | None = None) -> W8A8Linear:
        w = weight.float() if input_scale is None else weight.float() * input_scale[None, :]
        outlier_weight = None
        if outliers is not None and len(outliers):
            keep = torch.ones(w.shape[1], dtype=torch.bool)
            keep[outliers] = False
            outlier_weight, w = w[:, outliers].contiguous(), w[:, keep]
        if w.shape[1] == 0:  # every column an outlier: nothing left in INT8
            q, scale = torch.zeros(w.shape[0], 0, dtype=torch.int8), torch.ones(w.shape[0])
        else:
            q, scale = quantize_int8(w)
        return cls(q, scale, input_scale, outliers, outlier_weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        if self.inv_input_scale is not None:
            flat = flat * self.inv_input_scale
        high = None
        if self.inliers is not None:
            high, flat = flat[:, self.outliers], flat[:, self.inliers]
        if flat.shape[1]:
            xq, xs = quantize_rows(flat)
            y = torch._int_mm(xq, self.q.t()).float() * xs * self.scale
        else:
            y = torch.zeros(flat.shape[0], self.out_features)
        if high is not None:
            y = torch.addmm(y, high, self.outlier_weight.T)  # type: ignore[union-attr]
        return y.view(*x.shape[:-1], self.out_features)

    @property
    def nbytes(self) -> int:
        total = self.q.numel() + self.scale.numel() * 4
        if self.input_scale is not None:
            total += self.input_scale.numel() * 4
        if self.outlier_weight is not None:
            total += self.outlier_weight.numel() * 4 + self.outliers.numel() * 8  # type: ignore[union-attr]
        return total

    def tensors(self) -> dict[str, torch.Tensor]:
        t = {"q": self.q, "scale": self.scale}
        if self.input_scale is not None:
            t["input_scale"] = self.input_scale
        if self.outliers is not None:
            t["outliers"], t["outlier_weight"] = self.outliers, self.outlier_weight  # type: ignore[assignment]
        return t

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], meta: dict[str, object]) -> W8A8Linear:
        return cls(t["q"], t["scale"], t.get("input_scale"), t.get("outliers"),
                   t.get("outlier_weight"))
