"""Configuration of the edge service (`tandem serve edge`)."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.shared.config import option
from tandem.shared.models import DEFAULT_MODEL
from tandem.shared.service_config import ServiceConfig

# Names of the backends in tandem.edge.backend's registry.
BACKENDS = ("llama.cpp",)


@dataclass
class EdgeConfig(ServiceConfig):
    model: str = option(DEFAULT_MODEL, "Packaged model alias or .gguf path.")
    backend: str = option("llama.cpp", "Model backend (see tandem.edge.backend.BACKENDS).")
    threads: int = option(0, "Threads for decoding; 0 uses every core.")
    context_window: int = option(8192, "Longest prompt + output accepted, in tokens.")
    max_tokens_cap: int = option(4096, "Largest max_tokens a request may ask for.")
    default_max_tokens: int = option(256, "max_tokens when a request leaves it unset.")
    max_draft_tokens: int = option(32, "Largest k a Draft request may ask for.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.default_max_tokens <= self.max_tokens_cap:
            raise ValueError("default_max_tokens must be in [1, max_tokens_cap]")
        if self.max_tokens_cap >= self.context_window:
            raise ValueError("max_tokens_cap must be below context_window")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.max_draft_tokens < 1:
            raise ValueError("max_draft_tokens must be >= 1")
