"""`tandem compress` for the torch runtime: load the dense model once, calibrate on the
shipped text, build each recipe into its own artifact folder and measure perplexity."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tandem.edge import artifacts
from tandem.edge.compress.recipes import RECIPES, Recipe, build
from tandem.edge.compress.perplexity import runtime_perplexity, shipped_text, token_windows
from tandem.edge.compress.calibration import Calibration, calibrate
from tandem.edge.torch_model import LlamaShape, dense_runtime
from tandem.shared.models import ModelSource, load_tokenizer


@dataclass
class CompressResult:
    name: str
    folder: str
    model_bytes: int
    ppl: float | None
    seconds: float


def text_ids(source: ModelSource, name: str) -> list[int]:
    return list(load_tokenizer(source)(shipped_text(name))["input_ids"])


def calibration_for(shape: LlamaShape, state: dict[str, torch.Tensor], ids: list[int],
                    window: int = 256, max_rows: int = 1024) -> Calibration:
    return calibrate(dense_runtime(shape, state), token_windows(ids, window), max_rows)


def compress(source: ModelSource, names: list[str], out: Path, *, eval_tokens: int = 512,
             window: int = 256, overrides: dict[str, Recipe] | None = None,
             evaluate: bool = True) -> list[CompressResult]:
    """Build ``names`` (keys of RECIPES, or of ``overrides``) into ``out``/<name>/."""
    from tqdm import tqdm

    from tandem.edge.torch_backend import dense_source

    recipes = {**RECIPES, **(overrides or {})}
    unknown = [n for n in names if n not in recipes]
    if unknown:
        raise ValueError(f"unknown recipes {unknown}; known: {sorted(recipes)}")
    shape, state = dense_source(source)
    calib = calibration_for(shape, state, text_ids(source, "calibration"), window)
    windows = token_windows(text_ids(source, "evaluation"), window, eval_tokens)
    results = []
    for name in tqdm(names, desc="compress", unit="model"):
        started = time.perf_counter()
        folder = out / name.replace(":", "-")
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        built = build(shape, state, calib, recipes[name], str(folder))
        try:
            artifacts.save(built, recipes[name], folder, source.name)
            ppl = runtime_perplexity(built.runtime, windows) if evaluate else None
        finally:
            built.close()
        results.append(CompressResult(name, str(folder), built.model_bytes, ppl,
                                      time.perf_counter() - started))
    return results
