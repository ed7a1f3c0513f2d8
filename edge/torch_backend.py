"""The compressed torch runtime as an edge backend: a `tandem compress` artifact folder
(or, without one, the model's fp32 weights fully resident).

One runtime holds one sequence (a SlotModel of one slot); each request keeps the KV of the
longest common prefix with the previous one and truncates the rest, so rejected drafts are
rolled back without re-processing the prefix. With KV eviction (H2O, ``kv_budget``) the
cache is bounded; a rollback further back than its recent window re-reads the sequence.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from tandem.edge.artifacts import Built
from tandem.edge.slots import SlotBackend, SlotInput
from tandem.shared.backpressure import Backpressure

if TYPE_CHECKING:
    from tandem.edge.config import EdgeConfig
    from tandem.edge.torch_model import LlamaShape
    from tandem.shared.models import ModelSource


class TorchSlots:
    """The torch runtime as a SlotModel of one slot: it holds one sequence, so requests
    take turns on it (Info reports slots = 1); a new request keeps the KV of the prefix it
    shares with the previous one."""

    slots = 1
    batch_tokens = 1 << 30  # one sequence: any prompt chunk

    def __init__(self, built: Built, threads: int) -> None:
        self.built = built
        self.runtime = built.runtime
        self.vocab_size = built.runtime.shape.vocab
        self._threads = threads
        self._sequence: list[int] = []  # every token of the slot's sequence, evicted or not

    def evaluate(self, batch: list[SlotInput]) -> list[np.ndarray]:
        (item,) = batch
        torch.set_num_threads(self._threads)  # per thread: the scheduler's thread runs this
        self._resume_at(item.start)
        self._sequence[item.start:] = item.tokens
        return [self.runtime.forward(item.tokens)[-1].numpy()]  # logits: [V]

    def _resume_at(self, start: int) -> None:
        """Leave the runtime at position ``start`` of the sequence: roll back, or, where
        eviction dropped what a rollback needs, read the sequence again (bounded)."""
        runtime = self.runtime
        if runtime.position > start:
            runtime.truncate(start if runtime.can_truncate(start) else 0)
        if runtime.position < start:
            runtime.forward(self._sequence[runtime.position:start])

    def forget(self, slot: int, keep: int) -> None:
        del self._sequence[keep:]
        if self.runtime.can_truncate(keep):
            self.runtime.truncate(keep)

    def close(self) -> None:
        self.built.close()


class TorchBackend(SlotBackend):
    name = "torch"

    def __init__(self, built: Built, dtype: str, threads: int,
                 end_ids: frozenset[int] = frozenset(), max_waiting: int = 8,
                 registry: CollectorRegistry | None = None) -> None:
        self.built = built
        self.runtime = built.runtime
        super().__init__(TorchSlots(built, threads),
                         Backpressure("edge", 1, max_waiting, registry or CollectorRegistry()),
                         end_ids, dtype)

    @classmethod
    def from_config(cls, config: EdgeConfig, source: ModelSource,
                    registry: CollectorRegistry | None = None) -> TorchBackend:
        threads = config.threads or torch.get_num_threads()
        if config.artifacts:
            from tandem.edge.artifacts import load

            built = load(Path(config.artifacts))
            dtype = f"torch:{Path(config.artifacts).name}"
        else:
            built = resident_from_source(source)
            dtype = "torch:fp32"
        from tandem.shared.models import eos_token_ids, load_tokenizer

        end_ids = frozenset(eos_token_ids(load_tokenizer(source)))
        built.runtime.set_kv_eviction(config.kv_eviction())
        return cls(built, dtype, threads, end_ids, config.max_waiting, registry)


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
