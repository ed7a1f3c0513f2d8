"""Configuration of the cloud service (`tandem serve cloud`)."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.shared.config import option
from tandem.shared.service_config import TierConfig

DTYPES = ("float32", "bfloat16")


@dataclass
class CloudConfig(TierConfig):
    dtype: str = option("float32", "Weight/activation dtype: float32 or bfloat16.")
    max_sessions: int = option(64, "Speculative sessions whose KV cache is kept (LRU).")
    max_session_tokens: int = option(65536, "Total tokens of KV kept for sessions (LRU).")
    session_idle_seconds: float = option(600.0, "Drop a session's KV after this much idle time.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
