"""The default edge backend: a GGUF model run by llama.cpp (llama-cpp-python).

One llama.cpp context holds one sequence; requests take turns on it (an asyncio lock)
and each call re-uses the KV of the longest common prefix with the previous one, so a
speculative session continues without re-processing and rolls back rejected drafts by
truncating the KV cache.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tandem.edge.model_thread import ModelThreadBackend, reusable_prefix

if TYPE_CHECKING:
    from tandem.edge.config import EdgeConfig
    from tandem.shared.models import ModelSource


class LlamaCppBackend(ModelThreadBackend):
    name = "llama.cpp"

    def __init__(self, model_path: str, context_window: int, threads: int,
                 flash_attn: bool = False) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=model_path, n_ctx=context_window, n_threads=threads,
                         n_threads_batch=threads, flash_attn=flash_attn, logits_all=False,
                         verbose=False)
        self.dtype = _file_type(self.llm)
        self._n_vocab = self.llm.n_vocab()
        self.end_ids = frozenset({self.llm.token_eos()})
        super().__init__("edge-model")

    @classmethod
    def from_config(cls, config: EdgeConfig, source: ModelSource) -> LlamaCppBackend:
        if not source.is_gguf:
            raise ValueError(f"the llama.cpp backend needs a .gguf model, got {source.path}")
        return cls(str(source.path), config.context_window, config.threads or os.cpu_count() or 1,
                   config.flash_attn)

    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    def _eval_after_prefix(self, tokens: Sequence[int]) -> tuple[int, np.ndarray]:
        """Make the context hold ``tokens``; returns (reused prefix length, last logits)."""
        reuse = reusable_prefix(self.llm.input_ids[: self.llm.n_tokens], tokens)
        self.llm.n_tokens = reuse  # eval() drops the KV past n_tokens before appending
        self.llm.eval(list(tokens[reuse:]))
        return reuse, self._last_logits()

    def _eval_one(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self._last_logits()

    def _last_logits(self) -> np.ndarray:
        # logits of the last evaluated position: [V] (a view into llama.cpp's buffer)
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self._n_vocab,))

    def close(self) -> None:
        # wait for a running eval: freeing the context under it crashes llama.cpp
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.llm.close()


def _file_type(llm: Any) -> str:
    """The GGUF's weight format name (e.g. "Q4_1") from its metadata."""
    ftype = llm.metadata.get("general.file_type")
    names = {"0": "F32", "1": "F16", "2": "Q4_0", "3": "Q4_1", "7": "Q8_0", "8": "Q5_0",
             "9": "Q5_1", "10": "Q2_K", "11": "Q3_K_S", "12": "Q3_K_M", "13": "Q3_K_L",
             "14": "Q4_K_S", "15": "Q4_K_M", "16": "Q5_K_S", "17": "Q5_K_M", "18": "Q6_K"}
    return names.get(str(ftype), f"ftype {ftype}")
