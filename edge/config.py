"""Configuration of the edge service (`tandem serve edge`)."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.shared.config import option
from tandem.shared.service_config import TierConfig

# Names of the backends in tandem.edge.backend's registry.
BACKENDS = ("llama.cpp", "torch")


@dataclass
class EdgeConfig(TierConfig):
    backend: str = option("llama.cpp", f"Model backend: one of {BACKENDS}.")
    max_draft_tokens: int = option(32, "Largest k a Draft request may ask for.")
    artifacts: str = option(
        "", "torch backend: folder written by `tandem compress`; empty runs the model's "
        "fp32 weights fully resident.")
    flash_attn: bool = option(
        False, "llama.cpp backend: flash attention. Measured on a 2-core CPU with SmolLM2 "
        "Q4_1: 5.1 instead of 5.6 ms a token, but greedy drafts agree less with the cloud's "
        "fp32 model (0.83 instead of 0.89 of drafted tokens accepted).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.artifacts and self.backend != "torch":
            raise ValueError("artifacts is only used by the torch backend")
        if self.flash_attn and self.backend != "llama.cpp":
            raise ValueError("flash_attn is only used by the llama.cpp backend")
        if self.max_draft_tokens < 1:
            raise ValueError("max_draft_tokens must be >= 1")
