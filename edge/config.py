"""Configuration of the edge service (`tandem serve edge`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tandem.shared.config import option
from tandem.shared.gguf_quant import GGUF_TYPES
from tandem.shared.service_config import TierConfig

if TYPE_CHECKING:
    from tandem.edge.kv_eviction import KVEviction

# Names of the backends in tandem.edge.backend's registry.
BACKENDS = ("llama.cpp", "torch")
# Parallel slots of the llama.cpp backend by default (see the README for the measurement).
DEFAULT_LLAMA_SLOTS = 4
MAX_SLOTS = 256  # llama.cpp's LLAMA_MAX_SEQ


@dataclass
class EdgeConfig(TierConfig):
    backend: str = option("llama.cpp", f"Model backend: one of {BACKENDS}.")
    max_draft_tokens: int = option(32, "Largest k a Draft request may ask for.")
    slots: int = option(
        0, "Sequences decoded together, each in its own KV cache of context_window tokens "
           "(parallel slots, as llama.cpp's server has them); 0 = the backend's default "
           f"(llama.cpp {DEFAULT_LLAMA_SLOTS}; torch holds one sequence).")
    weights: str = option(
        "", "llama.cpp backend: serve the GGUF re-quantized to this weight format (e.g. Q8_0, "
            "made once and cached); empty = the file's own. Measured on a 2-core CPU with "
            "SmolLM2: Q8_0 decodes 8 streams at 2.8x its one-stream rate (211 tok/s), the "
            "shipped Q4_1 at 1.95x (179 tok/s): llama.cpp has batched kernels for Q8_0, not "
            "Q4_1; one stream is ~18 % slower in Q8_0.")
    max_waiting: int = option(
        16, "Most requests waiting for a slot; beyond it, or when a request's wait would "
            "outlast its deadline, it is refused with RESOURCE_EXHAUSTED before any work.")
    artifacts: str = option(
        "", "torch backend: folder written by `tandem compress`; empty runs the model's "
        "fp32 weights fully resident.")
    kv_budget: str = option(
        "", "torch backend: hold the KV cache to this many tokens (e.g. 1024: a fixed memory) "
            "or this share of the tokens seen (e.g. 0.5) by H2O eviction, which keeps a "
            "recent window and the tokens that received the most attention; empty keeps "
            "the full cache. (llama.cpp exposes no attention weights to choose by.)")
    kv_recent: float = option(
        0.5, "torch backend, with kv_budget: share of the budget kept as the recent window.")
    flash_attn: bool = option(
        False, "llama.cpp backend: flash attention. Measured on a 2-core CPU with SmolLM2 "
        "Q4_1: 5.1 instead of 5.6 ms a token, but greedy drafts agree less with the cloud's "
        "fp32 model (0.83 instead of 0.89 of drafted tokens accepted).")
    adaptive_threads: bool = option(
        True, "llama.cpp backend: use fewer threads than `threads` while other processes "
        "keep the cores busy (their barriers stall a token for scheduler quanta when a "
        "thread has no core; shared/cpu_share.py).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.artifacts and self.backend != "torch":
            raise ValueError("artifacts is only used by the torch backend")
        if self.weights and self.backend != "llama.cpp":
            raise ValueError("weights is only used by the llama.cpp backend")
        if self.weights and self.weights not in GGUF_TYPES:
            raise ValueError(f"weights must be one of {sorted(GGUF_TYPES)}, got {self.weights!r}")
        if self.kv_budget and self.backend != "torch":
            raise ValueError("kv_budget is only used by the torch backend")
        self.kv_eviction()  # a bad budget or window is a configuration error
        if self.flash_attn and self.backend != "llama.cpp":
            raise ValueError("flash_attn is only used by the llama.cpp backend")
        if self.max_draft_tokens < 1:
            raise ValueError("max_draft_tokens must be >= 1")
        if not 0 <= self.slots <= MAX_SLOTS or self.max_waiting < 0:
            raise ValueError(f"slots must be in [0, {MAX_SLOTS}] and max_waiting >= 0")
        if self.slots > 1 and self.backend != "llama.cpp":
            raise ValueError("slots > 1 needs the llama.cpp backend (torch holds one sequence)")
        if self.slots == 0:
            self.slots = DEFAULT_LLAMA_SLOTS if self.backend == "llama.cpp" else 1

    def kv_eviction(self) -> KVEviction | None:
        """The torch runtime's KV eviction policy (None: the full cache)."""
        from tandem.edge.kv_eviction import KVEviction, parse_kv_budget

        if not self.kv_budget:
            return None
        try:
            budget = parse_kv_budget(self.kv_budget)
        except ValueError:
            raise ValueError(f"kv_budget must be a token count or a share in (0, 1], got "
                             f"{self.kv_budget!r}") from None
        return KVEviction(budget=budget, recent=self.kv_recent)
