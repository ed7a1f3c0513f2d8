"""Configuration of the router service (`tandem serve router`)."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.shared.config import option
from tandem.shared.models import DEFAULT_MODEL
from tandem.shared.service_config import ServiceConfig


@dataclass
class RouterConfig(ServiceConfig):
    cloud_address: str = option("127.0.0.1:50052", "host:port of the Cloud service.")
    edge_address: str = option("127.0.0.1:50053", "host:port of the Edge service.")
    model: str = option(DEFAULT_MODEL, "Model whose tokenizer and chat template the tiers share.")
    state: str = option("memory", "State store: 'memory' or a redis:// URL.")
    session_ttl_seconds: float = option(3600.0, "A session expires after this long unused.")
    default_policy: str = option("auto", "Policy for requests that name none.")
    context_window: int = option(8192, "Longest prompt + output accepted, in tokens.")
    max_tokens_cap: int = option(4096, "Largest max_tokens a request may ask for.")
    default_max_tokens: int = option(256, "max_tokens when a request leaves it unset.")
    default_timeout_seconds: float = option(
        300.0, "Deadline for requests whose caller set none (bounds every outbound call).")
    cascade_threshold: float = option(
        0.5, "Cascade: escalate when the edge answer's score (geometric-mean token "
             "probability) is below this.")
    draft_tokens: int = option(6, "Speculative: tokens the edge drafts per round (k).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.default_max_tokens <= self.max_tokens_cap < self.context_window:
            raise ValueError("need 0 < default_max_tokens <= max_tokens_cap < context_window")
        if not 0.0 <= self.cascade_threshold <= 1.0:
            raise ValueError("cascade_threshold must be in [0, 1]")
        if not 1 <= self.draft_tokens <= 32:
            raise ValueError("draft_tokens must be in [1, 32]")
        if self.default_timeout_seconds <= 0:
            raise ValueError("default_timeout_seconds must be > 0")
