"""The compressed torch runtime as an edge backend: a `tandem compress` artifact folder
(or, without one, the model's fp32 weights fully resident).

One runtime holds one sequence (as the llama.cpp backend does); each call keeps the KV of
the longest common prefix with the previous one and truncates the rest, so rejected drafts
are rolled back without re-processing the prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from tandem.edge.artifacts import Built
from tandem.edge.model_thread import ModelThreadBackend, reusable_prefix

if TYPE_CHECKING:
    from tandem.edge.config import EdgeConfig
    from tandem.edge.torch_model import LlamaShape
    from tandem.shared.models import ModelSource


class TorchBackend(ModelThreadBackend):
    name = "torch"

    def __init__(self, built: Built, dtype: str, threads: int) -> None:
        self.built = built
        self.runtime = built.runtime
        self.dtype = dtype
        self._threads = threads
        self._tokens: list[int] = []  # the sequence whose KV the runtime holds
        super().__init__("edge-torch")

    @classmethod
    def from_config(cls, config: EdgeConfig, source: ModelSource) -> TorchBackend:
        threads = config.threads or torch.get_num_threads()
        if config.artifacts:
            from tandem.edge.artifacts import load

            built = load(Path(config.artifacts))
            dtype = f"torch:{Path(config.artifacts).name}"
        else:
            built = resident_from_source(source)
            dtype = "torch:fp32"
        from tandem.shared.models import eos_token_ids, load_tokenizer

        backend = cls(built, dtype, threads)
        backend.end_ids = frozenset(eos_token_ids(load_tokenizer(source)))
        return backend

    @property
    def vocab_size(self) -> int:
        return self.runtime.shape.vocab

    def _eval_after_prefix(self, tokens: Sequence[int]) -> tuple[int, np.ndarray]:
        """Make the runtime hold ``tokens``; returns (reused prefix length, last logits)."""
        torch.set_num_threads(self._threads)  # per thread: the executor's thread runs this
        reuse = reusable_prefix(self._tokens, tokens)
        self.runtime.truncate(reuse)
        logits = self.runtime.forward(list(tokens[reuse:]))
        self._tokens = list(tokens)
        return reuse, logits[-1].numpy()

    def _eval_one(self, token: int) -> np.ndarray:
        logits = self.runtime.forward([token])
        self._tokens.append(token)
        return logits[-1].numpy()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.built.close()


def dense_source(source: ModelSource) -> tuple[LlamaShape, dict[str, torch.Tensor]]:
    """fp32 weights and shape of ``source`` through the cloud's loader (which de-quantizes
    a GGUF once and caches it as safetensors)."""
    from tandem.shared.model_loader import load_causal_lm
    from tandem.edge.torch_model import LlamaShape

    model = load_causal_lm(source, "float32")
    return LlamaShape.from_dict(model.config.to_dict()), dict(model.state_dict())


def resident_from_source(source: ModelSource) -> Built:
    from tandem.edge.torch_model import dense_runtime

    shape, state = dense_source(source)
    runtime = dense_runtime(shape, state)
    return Built(runtime, runtime.weight_bytes)
