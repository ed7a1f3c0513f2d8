"""Configuration of the cloud service (`tandem serve cloud`)."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.shared.config import option
from tandem.shared.service_config import TierConfig

DTYPES = ("float32", "bfloat16")
ENGINES = ("builtin", "vllm")


@dataclass
class CloudConfig(TierConfig):
    engine: str = option("builtin", "builtin (Tandem's engine: speculative sessions, sampled "
                         "Verify) or vllm (vLLM's async engine from its own venv, "
                         "scripts/install-vllm.sh; greedy Verify only).")
    dtype: str = option("float32", "Weight/activation dtype: float32 or bfloat16.")
    max_sessions: int = option(64, "Speculative sessions whose KV cache is kept (LRU).")
    max_session_tokens: int = option(65536, "Total tokens of KV kept for sessions (LRU).")
    session_idle_seconds: float = option(600.0, "Drop a session's KV after this much idle time.")
    kv_cache_mb: int = option(512, "Memory budget of the paged KV cache pool, in MiB.")
    block_size: int = option(8, "Tokens per KV cache block (small: little waste at the end).")
    max_num_seqs: int = option(32, "Most sequences in one batched step (running).")
    max_waiting: int = option(64, "Most queued requests; beyond it RESOURCE_EXHAUSTED.")
    max_batched_tokens: int = option(2048, "Token budget of one step (prefills are chunked).")
    prefix_caching: bool = option(True, "Reuse cached KV blocks of identical prefixes.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("kv_cache_mb", "block_size", "max_num_seqs", "max_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_waiting < 0:
            raise ValueError("max_waiting must be >= 0")
