"""One request as a load-test client saw it: the unit the locust users write out and the
report summarizes. No locust or gRPC imports here (importing locust monkey-patches the
whole process with gevent)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tandem.v1 import common_pb2

# The one status a healthy overloaded stack answers with on purpose (not a failure).
REJECTED_CODE = "RESOURCE_EXHAUSTED"


@dataclass
class RequestRecord:
    """What one request did, as the client saw it (seconds; `start_unix` is wall time)."""

    target: str
    user: str
    policy: str  # requested policy ("" = the router's default); resolved one below
    tags: list[str] = field(default_factory=list)
    session: bool = False
    start_unix: float = 0.0
    code: str = "OK"
    error: str = ""
    ttft_s: float | None = None
    e2el_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    tokens_by_tier: dict[str, int] = field(default_factory=dict)
    resolved_policy: str = ""
    escalated: bool = False
    cached: bool = False  # answered from the router's response cache
    edge_s: float = 0.0  # the router's own timings: waiting on the edge tier,
    cloud_s: float = 0.0  # on the cloud tier,
    overhead_s: float = 0.0  # and its own work (routing, validation, state)
    prompt_tokens: int = 0
    cloud_forward_passes: int = 0
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0

    @property
    def output_tokens(self) -> int:
        return sum(self.tokens_by_tier.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> RequestRecord:
        return cls(**row)


def tier_name(tier: int) -> str:
    return common_pb2.Tier.Name(tier).removeprefix("TIER_").lower()
