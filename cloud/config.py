"""Configuration of the cloud service (`tandem serve cloud`)."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.shared.config import option
from tandem.shared.models import DEFAULT_MODEL
from tandem.shared.service_config import ServiceConfig

DTYPES = ("float32", "bfloat16")


@dataclass
class CloudConfig(ServiceConfig):
    model: str = option(DEFAULT_MODEL, "Packaged model alias, .gguf path or HF model folder.")
    dtype: str = option("float32", "Weight/activation dtype: float32 or bfloat16.")
    threads: int = option(0, "Torch intra-op threads; 0 uses every core.")
    context_window: int = option(8192, "Longest prompt + output accepted, in tokens.")
    max_tokens_cap: int = option(4096, "Largest max_tokens a request may ask for.")
    default_max_tokens: int = option(256, "max_tokens when a request leaves it unset.")
    max_sessions: int = option(64, "Speculative sessions whose KV cache is kept (LRU).")
    max_session_tokens: int = option(65536, "Total tokens of KV kept for sessions (LRU).")
    session_idle_seconds: float = option(600.0, "Drop a session's KV after this much idle time.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not 0 < self.default_max_tokens <= self.max_tokens_cap:
            raise ValueError("default_max_tokens must be in [1, max_tokens_cap]")
        if self.max_tokens_cap >= self.context_window:
            raise ValueError("max_tokens_cap must be below context_window")
