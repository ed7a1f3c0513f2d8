"""The default edge backend: a GGUF model run by llama.cpp (llama-cpp-python's low-level
API), with parallel slots.

One llama.cpp context holds ``slots`` sequences, one per slot (sequence id = slot index),
each with its own KV cache of ``context_window`` tokens. A step appends tokens to several
slots in one ``llama_decode``; rolling a slot back (a rejected draft, a new request on a
slot whose cache shares only a prefix) removes its KV past that position
(``llama_memory_seq_rm``) instead of re-processing the prefix.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry

from tandem.edge.slots import SlotBackend, SlotInput
from tandem.shared.backpressure import Backpressure
from tandem.shared.cpu_share import CoreShare
from tandem.shared.gguf_quant import requantized

if TYPE_CHECKING:
    from tandem.edge.config import EdgeConfig
    from tandem.shared.models import ModelSource

# Tokens one llama_decode call may take (a step's decode tokens plus a prompt chunk).
BATCH_TOKENS = 512

# general.file_type of a GGUF -> its weight format's name (Info's dtype).
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
              15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K"}


class LlamaSlots:
    """A GGUF model and one context holding ``slots`` sequences (model thread only)."""

    def __init__(self, model_path: str, slots: int, context_window: int, threads: int,
                 flash_attn: bool = False, adaptive_threads: bool = True) -> None:
        import llama_cpp
        import llama_cpp._logger

        self._ll = llama_cpp
        llama_cpp._logger.set_verbose(False)  # llama.cpp's load and graph logs
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self._model = llama_cpp.llama_model_load_from_file(model_path.encode(), model_params)
        if not self._model:
            raise ValueError(f"llama.cpp could not load {model_path}")
        vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.vocab_size = llama_cpp.llama_vocab_n_tokens(vocab)
        self.eos = llama_cpp.llama_vocab_eos(vocab)
        self.dtype = FILE_TYPES.get(llama_cpp.llama_model_ftype(self._model), "unknown")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = context_window * slots  # split evenly: one window per sequence
        params.n_batch = params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = slots
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise ValueError("llama.cpp could not create a context")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self.slots = slots
        self.batch_tokens = BATCH_TOKENS
        self._batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, 1)
        # fewer threads while other processes keep the cores busy (shared/cpu_share.py)
        self._share = CoreShare(threads) if adaptive_threads else None
        self.threads = threads

    def evaluate(self, batch: list[SlotInput]) -> list[np.ndarray]:
        b = self._batch
        n, last = 0, []
        for item in batch:
            for offset, token in enumerate(item.tokens):
                b.token[n] = token
                b.pos[n] = item.start + offset
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = item.slot
                b.logits[n] = offset == len(item.tokens) - 1
                n += 1
            last.append(n - 1)
        if n > BATCH_TOKENS:
            raise ValueError(f"a step of {n} tokens is over the batch size {BATCH_TOKENS}")
        b.n_tokens = n
        with self._share.step() if self._share else nullcontext(self.threads) as threads:
            if threads != self.threads:
                self.threads = threads
                self._ll.llama_set_n_threads(self._ctx, threads, threads)
            status = self._ll.llama_decode(self._ctx, b)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        # views into llama.cpp's logits buffer: [V] per input, valid until the next call
        return [np.ctypeslib.as_array(self._ll.llama_get_logits_ith(self._ctx, i),
                                      shape=(self.vocab_size,)) for i in last]

    def forget(self, slot: int, keep: int) -> None:
        self._ll.llama_memory_seq_rm(self._memory, slot, keep, -1)

    def close(self) -> None:
        self._ll.llama_batch_free(self._batch)
        self._ll.llama_free(self._ctx)
        self._ll.llama_model_free(self._model)


class LlamaCppBackend(SlotBackend):
    name = "llama.cpp"

    @classmethod
    def open(cls, model_path: str, slots: int = 1, context_window: int = 4096,
             threads: int = 0, flash_attn: bool = False, max_waiting: int = 16,
             registry: CollectorRegistry | None = None,
             adaptive_threads: bool = True) -> LlamaCppBackend:
        model = LlamaSlots(model_path, slots, context_window, threads or os.cpu_count() or 1,
                           flash_attn, adaptive_threads)
        backpressure = Backpressure("edge", slots, max_waiting, registry or CollectorRegistry())
        return cls(model, backpressure, frozenset({model.eos}), model.dtype)

    @classmethod
    def from_config(cls, config: EdgeConfig, source: ModelSource,
                    registry: CollectorRegistry | None = None) -> LlamaCppBackend:
        if not source.is_gguf:
            raise ValueError(f"the llama.cpp backend needs a .gguf model, got {source.path}")
        path = requantized(source, config.weights) if config.weights else source.path
        return cls.open(str(path), config.slots, config.context_window, config.threads,
                        config.flash_attn, config.max_waiting, registry, config.adaptive_threads)

