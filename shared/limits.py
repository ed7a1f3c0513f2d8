"""How long a request may be: the three settings every component that accepts requests
has (tiers, router, SDK), declared and checked here once. Component configs inherit them;
the tier handler and the router read them from their config."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.shared.config import option


@dataclass
class RequestLimits:
    context_window: int = option(8192, "Longest prompt + output accepted, in tokens.")
    max_tokens_cap: int = option(4096, "Largest max_tokens a request may ask for.")
    default_max_tokens: int = option(256, "max_tokens when a request leaves it unset.")

    def check_request_limits(self) -> None:
        """Raise ValueError unless 0 < default_max_tokens <= max_tokens_cap < context_window."""
        if not 0 < self.default_max_tokens <= self.max_tokens_cap < self.context_window:
            raise ValueError("need 0 < default_max_tokens <= max_tokens_cap < context_window, "
                             f"got {self.default_max_tokens}, {self.max_tokens_cap}, "
                             f"{self.context_window}")
