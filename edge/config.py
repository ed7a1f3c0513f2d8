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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.artifacts and self.backend != "torch":
            raise ValueError("artifacts is only used by the torch backend")
        if self.max_draft_tokens < 1:
            raise ValueError("max_draft_tokens must be >= 1")
