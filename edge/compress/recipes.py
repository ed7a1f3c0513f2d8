"""Building compressed torch runtimes from a dense model and calibration statistics:
quantization, Wanda pruning, activation sparsity and flash offloading, by named recipe."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from tandem.edge.activation_quant import (W8A8Linear, check_alpha, outlier_columns,
                                          smoothquant_scale)
from tandem.edge.artifacts import Built
from tandem.edge.compress.calibration import (Calibration, activation_thresholds,
                                              awq_input_scale, fit_predictor, wanda_prune)
from tandem.edge.flash import FlashStore, Int8Selector, Predictor, flash_dtype, record_bytes
from tandem.edge.flash_ffn import NaiveFlashFFN, WindowedFlashFFN
from tandem.edge.flash_window import capacity_for, choose_window
from tandem.edge.quantize import Int4Linear, Int8Embedding, Int8Linear
from tandem.edge.sparsity import ActivationSparseFFN
from tandem.edge.torch_model import LlamaRuntime, LlamaShape, dense_runtime

Progress = Callable[[str, int], None]  # (stage, steps done) for progress bars


@dataclass(frozen=True)
class Recipe:
    """What to do to the dense model (every field is independent of the others)."""

    # fp32 | int8 | int4 | w8a8 (decoder linears; INT8 embedding and LM head when not fp32)
    weights: str = "fp32"
    group_size: int = 32  # INT4 group of input channels
    awq: bool = True  # INT4: activation-aware input scaling from calibration
    smoothquant: bool = False  # W8A8: SmoothQuant's input smoothing
    smooth_alpha: float | None = None  # SmoothQuant's α in [0, 1]; None: chosen per linear
    outlier_threshold: float = 0.0  # W8A8: LLM.int8()'s outlier columns above this; 0 = off
    prune: str | None = None  # Wanda: "unstructured" (50%) | "2:4"
    act_sparsity: float = 0.0  # target fraction of zeroed FFN activations
    flash: str | None = None  # None | "naive" | "windowed"
    budget_fraction: float = 0.6  # flash: DRAM budget as a fraction of the model's bytes
    window: int | None = None  # flash: tokens kept; None chooses the largest k the budget fits
    selector: str = "lowrank"  # flash neuron selector: lowrank (predictor) | int8
    predictor_rank: int = 64
    max_gap: int = 0  # flash: join reads across up to this many unneeded neurons
    recall: float = 0.9  # predictor: share of truly active neurons it must select
    io_mode: str = "direct"
    io_engine: str = "aio"  # flash reads: Linux AIO batches | a thread pool of preadv
    flash_dtype: str = "fp32"  # flash: storage format of the bundles (fp32 | fp16)

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_FORMATS:
            raise ValueError(f"unknown weight format {self.weights!r}; known: {WEIGHT_FORMATS}")
        check_alpha(self.smooth_alpha)
        if self.outlier_threshold < 0:
            raise ValueError(f"outlier_threshold must be >= 0, got {self.outlier_threshold}")
        if self.weights != "w8a8" and (self.smoothquant or self.outlier_threshold):
            raise ValueError("SmoothQuant and LLM.int8() outliers are W8A8 options "
                             "(weights='w8a8')")


WEIGHT_FORMATS = ("fp32", "int8", "int4", "w8a8")


RECIPES: dict[str, Recipe] = {
    "resident": Recipe(),
    "int8": Recipe(weights="int8"),
    "int4": Recipe(weights="int4"),
    "int4-noawq": Recipe(weights="int4", awq=False),
    # W8A8: per-token INT8 activations as they come (the baseline the remedies are for),
    # with SmoothQuant's smoothing, and with LLM.int8()'s floating-point outlier columns.
    "w8a8": Recipe(weights="w8a8"),
    "w8a8-smoothquant": Recipe(weights="w8a8", smoothquant=True),
    "w8a8-llm-int8": Recipe(weights="w8a8", outlier_threshold=6.0),
    "wanda50": Recipe(prune="unstructured"),
    "wanda-2:4": Recipe(prune="2:4"),
    "act-sparse50": Recipe(act_sparsity=0.5),
    "int8-act-sparse50": Recipe(weights="int8", act_sparsity=0.5),
    "flash-naive": Recipe(weights="int8", flash="naive"),
    # Flash: 65% activation sparsity is where SmolLM2 meets both +15% perplexity and 5x
    # fewer bytes than naive at a 60% budget (measured: 50% reads 4.6x fewer, 70% costs +15%).
    "flash": Recipe(weights="int8", flash="windowed", act_sparsity=0.65),
    "flash-int8sel": Recipe(weights="int8", flash="windowed", act_sparsity=0.65, selector="int8"),
    # fp16 bundles: half the bytes per neuron (3584 B); the naive baseline in the same format
    "flash-naive-fp16": Recipe(weights="int8", flash="naive", flash_dtype="fp16"),
    "flash-int8sel-fp16": Recipe(weights="int8", flash="windowed", act_sparsity=0.65,
                                 selector="int8", flash_dtype="fp16"),
}




def quantize_runtime(runtime: LlamaRuntime, calib: Calibration | None, recipe: Recipe,
                     include_ffn: bool = True) -> None:
    """Replace the dense linears (and the embedding) by the recipe's weight format."""
    if recipe.weights == "fp32":
        return
    runtime.embedding = Int8Embedding.from_dense(runtime.embedding.weight)  # type: ignore[attr-defined]
    for index, layer in enumerate(runtime.layers):
        names = ["q", "k", "v", "o"] + (["gate", "up", "down"] if include_ffn else [])
        for name in names:
            owner = layer if name in ("q", "k", "v", "o") else layer.ffn
            weight = getattr(owner, name).weight
            if recipe.weights == "int8":
                new = Int8Linear.from_dense(weight)
            elif recipe.weights == "w8a8":
                new = _w8a8(weight, calib, index, name, recipe)
            else:
                scale = None
                if recipe.awq:
                    if calib is None:
                        raise ValueError("AWQ needs calibration inputs")
                    scale = awq_input_scale(weight, calib.of(index, name), recipe.group_size)
                new = Int4Linear.from_dense(weight, recipe.group_size, scale)
            setattr(owner, name, new)


def _w8a8(weight: torch.Tensor, calib: Calibration | None, layer: int, name: str,
          recipe: Recipe) -> W8A8Linear:
    if not (recipe.smoothquant or recipe.outlier_threshold):
        return W8A8Linear.from_dense(weight)
    if calib is None:
        raise ValueError("SmoothQuant and LLM.int8() need calibration inputs")
    inputs = calib.of(layer, name)
    if recipe.smoothquant:
        scale, _ = smoothquant_scale(weight, inputs, recipe.smooth_alpha)
        return W8A8Linear.from_dense(weight, input_scale=scale)
    return W8A8Linear.from_dense(weight, outliers=outlier_columns(inputs,
                                                                  recipe.outlier_threshold))


def build(shape: LlamaShape, state: dict[str, torch.Tensor], calib: Calibration, recipe: Recipe,
          workdir: str) -> Built:
    """The runtime for ``recipe`` (flash recipes write/reuse ``workdir``/ffn.flash)."""
    runtime = dense_runtime(shape, {k: v.clone() for k, v in state.items()})
    thresholds = activation_thresholds(calib, shape.layers, recipe.act_sparsity) \
        if recipe.act_sparsity > 0 else None
    if recipe.prune:
        wanda_prune(runtime, calib, recipe.prune)
    if recipe.flash:
        return _build_flash(runtime, calib, recipe, thresholds, workdir)
    quantize_runtime(runtime, calib, recipe)
    if thresholds is not None:
        for layer, threshold in zip(runtime.layers, thresholds):
            ffn = layer.ffn
            layer.ffn = ActivationSparseFFN(ffn.gate, ffn.up, ffn.down, threshold)  # type: ignore[attr-defined]
    return Built(runtime, runtime.weight_bytes)


def write_flash_file(path: str, ffns: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                     dtype: str = "fp32", progress: Callable[[int], None] | None = None) -> None:
    """One record per neuron per layer: [gate row | up row | down column | pad]."""
    torch_dtype = flash_dtype(dtype)
    with open(path, "wb") as fh:
        for gate, up, down in ffns:  # [F, H], [F, H], [H, F]
            hidden = gate.shape[1]
            width = record_bytes(hidden, dtype) // torch_dtype.itemsize
            records = torch.zeros(gate.shape[0], width, dtype=torch_dtype)
            records[:, :hidden] = gate
            records[:, hidden:2 * hidden] = up
            records[:, 2 * hidden:3 * hidden] = down.T
            fh.write(records.numpy().tobytes())
            if progress:
                progress(1)


def flash_path(workdir: str) -> str:
    return os.path.join(workdir, "ffn.flash")


def ensure_flash_file(runtime: LlamaRuntime, workdir: str, dtype: str = "fp32") -> str:
    """Write the bundled FFN file from the dense FFNs (once per workdir and format)."""
    path = flash_path(workdir)
    s = runtime.shape
    expected = s.layers * s.ffn * record_bytes(s.hidden, dtype)
    if not (os.path.isfile(path) and os.path.getsize(path) == expected):
        os.makedirs(workdir, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        write_flash_file(tmp, [(l.ffn.gate.weight, l.ffn.up.weight, l.ffn.down.weight)  # type: ignore[attr-defined]
                               for l in runtime.layers], dtype)
        os.replace(tmp, path)
    return path


def _build_flash(runtime: LlamaRuntime, calib: Calibration, recipe: Recipe,
                 thresholds: list[float] | None, workdir: str) -> Built:
    s = runtime.shape
    path = ensure_flash_file(runtime, workdir, recipe.flash_dtype)
    dense_ffns = [layer.ffn for layer in runtime.layers]
    ffn_bytes = s.layers * 3 * s.hidden * s.ffn * flash_dtype(recipe.flash_dtype).itemsize
    store = FlashStore(path, s.layers, s.ffn, s.hidden, recipe.io_mode, dtype=recipe.flash_dtype,
                       io_engine=recipe.io_engine)
    quantize_runtime(runtime, calib, recipe, include_ffn=False)  # embedding + attention
    if recipe.flash == "naive":
        shared = store.buffer(s.ffn)
        for index, layer in enumerate(runtime.layers):
            layer.ffn = NaiveFlashFFN(index, store, shared)
        resident = runtime.weight_bytes - shared.nbytes
        return Built(runtime, resident + ffn_bytes, store=store)
    if thresholds is None:
        raise ValueError("windowed flash needs act_sparsity > 0 (the predictor's target)")
    predictors = [_selector(recipe, f, calib.inputs[(i, "ffn")], thresholds[i])
                  for i, f in enumerate(dense_ffns)]
    resident = (runtime.weight_bytes - sum(f.dram_bytes for f in dense_ffns)
                + sum(p.nbytes for p in predictors))
    model_bytes = resident + ffn_bytes
    capacity = capacity_for(model_bytes, ffn_bytes, recipe.budget_fraction, s.layers, s.ffn,
                            store.record)
    selections = calibration_selections(predictors, calib)
    window = recipe.window if recipe.window is not None else choose_window(selections, capacity)
    for index, layer in enumerate(runtime.layers):
        layer.ffn = WindowedFlashFFN(index, store, predictors[index], thresholds[index],
                                     capacity, window, recipe.max_gap)
    return Built(runtime, model_bytes, window=window, capacity=capacity, store=store,
                 selections=selections, ffn_file_bytes=ffn_bytes)


def _selector(recipe: Recipe, ffn: object, inputs: torch.Tensor, threshold: float) -> Predictor:
    gate, up = ffn.gate.weight, ffn.up.weight  # type: ignore[attr-defined]
    if recipe.selector == "lowrank":
        return fit_predictor(gate, up, inputs, recipe.predictor_rank, threshold, recipe.recall)
    if recipe.selector == "int8":
        return Int8Selector(gate, up, threshold)  # type: ignore[return-value]
    raise ValueError(f"unknown selector {recipe.selector!r}; known: lowrank, int8")


def calibration_selections(predictors: list[Predictor], calib: Calibration,
                           tokens: int = 256) -> np.ndarray:
    """Which neurons each selector picks for the first ``tokens`` calibration tokens
    ([L, N, F] bool; before the per-token capacity cap)."""
    return np.stack([(p.scores(calib.inputs[(i, "ffn")][:tokens]) >= p.threshold).numpy()
                     for i, p in enumerate(predictors)])


def with_overrides(recipe: Recipe, **changes: object) -> Recipe:
    return replace(recipe, **changes)  # type: ignore[arg-type]
