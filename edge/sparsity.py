"""Calibration statistics, Wanda pruning (unstructured and 2:4) and activation sparsity in
the SwiGLU FFN with calibrated per-layer thresholds (CATS/TEAL-style, training-free)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tandem.edge.torch_model import DenseFFN, DenseLinear, Linear, LlamaRuntime

# Input sites of the linear layers: q/k/v read "attn", o reads "o", gate/up read "ffn",
# down reads "down" (= silu(gate x) * up x, derived from "ffn").
SITE_OF = {"q": "attn", "k": "attn", "v": "attn", "o": "o", "gate": "ffn", "up": "ffn",
           "down": "down"}


@dataclass
class Calibration:
    """Inputs of every linear site seen on the calibration text: (layer, site) -> [N, in]."""

    inputs: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)

    def of(self, layer: int, linear: str) -> torch.Tensor:
        return self.inputs[(layer, SITE_OF[linear])]


def calibrate(runtime: LlamaRuntime, chunks: Iterable[list[int]], max_rows: int = 1024) -> Calibration:
    """Run the (dense) runtime over token chunks and keep up to ``max_rows`` inputs per site."""
    rows: dict[tuple[int, str], list[torch.Tensor]] = {}

    def record(layer: int, site: str, x: torch.Tensor) -> None:
        rows.setdefault((layer, site), []).append(x.detach().clone())

    runtime.recorder = record
    try:
        for chunk in chunks:
            runtime.truncate(0)
            runtime.forward(chunk)
    finally:
        runtime.recorder = None
        runtime.truncate(0)
    calib = Calibration({key: torch.cat(parts)[:max_rows] for key, parts in rows.items()})
    for index, layer in enumerate(runtime.layers):
        ffn = layer.ffn
        if not isinstance(ffn, DenseFFN):
            raise TypeError("calibrate needs the dense runtime")
        x = calib.inputs[(index, "ffn")]
        calib.inputs[(index, "down")] = F.silu(ffn.gate(x)) * ffn.up(x)
    return calib


def wanda_mask(weight: torch.Tensor, inputs: torch.Tensor, pattern: str) -> torch.Tensor:
    """Which weights to keep ([out, in] bool) by the Wanda score |W_ij| * ||X_j||_2:
    ``unstructured`` keeps the top half of each output row, ``2:4`` keeps 2 of every 4
    consecutive inputs."""
    score = weight.abs() * inputs.norm(dim=0)[None, :]  # [out, in]
    keep = torch.zeros_like(weight, dtype=torch.bool)
    if pattern == "unstructured":
        top = score.topk(weight.shape[1] // 2, dim=1).indices
        keep.scatter_(1, top, True)
    elif pattern == "2:4":
        groups = score.view(weight.shape[0], -1, 4)
        top = groups.topk(2, dim=-1).indices
        keep.view(weight.shape[0], -1, 4).scatter_(-1, top, True)
    else:
        raise ValueError(f"unknown sparsity pattern {pattern!r}; known: unstructured, 2:4")
    return keep


def wanda_prune(runtime: LlamaRuntime, calib: Calibration, pattern: str) -> None:
    """Zero half of every decoder linear's weights in place (the LM head is kept dense)."""
    for index, layer in enumerate(runtime.layers):
        linears = dict(layer.linears())
        if isinstance(layer.ffn, DenseFFN):
            linears.update(gate=layer.ffn.gate, up=layer.ffn.up, down=layer.ffn.down)
        for name, linear in linears.items():
            if not isinstance(linear, DenseLinear):
                raise TypeError("Wanda pruning works on dense fp32 weights")
            linear.weight.mul_(wanda_mask(linear.weight, calib.of(index, name), pattern))


def activation_thresholds(calib: Calibration, layers: int, sparsity: float) -> list[float]:
    """Per layer, the |silu(gate x) * up x| below which a ``sparsity`` fraction of the
    calibration activations fall. Thresholding this product (the input of the down
    projection, as TEAL does) rather than silu(gate x) alone (CATS) costs SmolLM2 far less
    perplexity at the same sparsity (measured: +3% vs +31% at 50%)."""
    thresholds = []
    for index in range(layers):
        act = calib.inputs[(index, "down")].abs().flatten()
        thresholds.append(float(torch.quantile(act[:16_000_000], sparsity)))
    return thresholds


class NeuronRows:
    """A dense down projection stored one row per FFN neuron ([F, H], the transpose of
    the [H, F] weight), so a token's surviving neurons are a gather of contiguous rows: on
    this CPU 10x faster than gathering the columns of [H, F] (65 against 627 µs a layer at
    50 % kept), which made activation sparsity slower than the dense FFN."""

    kind = "dense"

    def __init__(self, weight: torch.Tensor) -> None:
        self.rows = weight.float().t().contiguous()  # [F, H]

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.rows

    def gather(self, h: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
        """h[:, neurons] times those neurons' rows: [T, K] @ [K, H]."""
        return h[:, neurons] @ torch.index_select(self.rows, 0, neurons)

    @property
    def nbytes(self) -> int:
        return self.rows.numel() * self.rows.element_size()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.rows.t().contiguous()}  # saved as the [H, F] dense weight


class ActivationSparseFFN:
    """SwiGLU whose intermediate activations below the layer's threshold are zeroed, so
    the down projection needs only the surviving neurons' rows (gathered for a single
    token of dense weights; masked otherwise)."""

    kind = "act_sparse"

    def __init__(self, gate: Linear, up: Linear, down: Linear, threshold: float) -> None:
        if isinstance(down, DenseLinear):
            down = NeuronRows(down.weight)
        self.gate, self.up, self.down, self.threshold = gate, up, down, threshold

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.gate(x)) * self.up(x)  # [T, F]
        keep = h.abs() >= self.threshold
        if x.shape[0] == 1 and isinstance(self.down, NeuronRows):
            return self.down.gather(h, keep[0].nonzero().squeeze(1))
        return self.down(h * keep)

    @property
    def dram_bytes(self) -> int:
        return self.gate.nbytes + self.up.nbytes + self.down.nbytes


def sparsify_activations(runtime: LlamaRuntime, thresholds: list[float]) -> None:
    for layer, threshold in zip(runtime.layers, thresholds, strict=True):
        ffn = layer.ffn
        layer.ffn = ActivationSparseFFN(ffn.gate, ffn.up, ffn.down, threshold)  # type: ignore[attr-defined]
