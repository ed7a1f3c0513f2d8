"""The SDK's public types: responses with provenance, stream chunks, usage, the routing
decision, and typed errors that carry the gRPC status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tandem.shared import errors
from tandem.shared.segments import Segment
from tandem.v1 import common_pb2, router_pb2

Tier = Literal["edge", "cloud", "unspecified"]
FinishReason = Literal["stop", "length", "unspecified"]

_TIERS: dict[int, Tier] = {common_pb2.TIER_EDGE: "edge", common_pb2.TIER_CLOUD: "cloud"}
_FINISH: dict[int, FinishReason] = {common_pb2.FINISH_REASON_STOP: "stop",
                                    common_pb2.FINISH_REASON_LENGTH: "length"}


def tier_name(tier: int) -> Tier:
    return _TIERS.get(tier, "unspecified")


@dataclass(frozen=True)
class Usage:
    """Token accounting of one answer."""

    prompt_tokens: int = 0
    edge_tokens: int = 0  # answer tokens produced by the edge model
    cloud_tokens: int = 0  # answer tokens produced (or verified) by the cloud model
    cloud_forward_passes: int = 0
    draft_tokens: int = 0  # speculative: tokens the edge proposed
    accepted_draft_tokens: int = 0  # speculative: of those, accepted by the cloud

    @property
    def completion_tokens(self) -> int:
        return self.edge_tokens + self.cloud_tokens

    @classmethod
    def from_pb(cls, usage: common_pb2.Usage) -> Usage:
        return cls(usage.prompt_tokens, usage.edge_tokens, usage.cloud_tokens,
                   usage.cloud_forward_passes, usage.draft_tokens, usage.accepted_draft_tokens)


@dataclass(frozen=True)
class Decision:
    """How the answer was routed."""

    policy: str = ""
    escalated: bool = False
    score: float = 0.0  # cascade: the scorer's P(edge answer acceptable)
    threshold: float = 0.0
    route_score: float = 0.0  # route/auto: the prompt router's P(edge suffices)
    cached: bool = False
    speculation_abandoned: bool = False
    # Load-aware routing moved the request off the tier its policy would have used, and
    # why ("edge_busy", "edge_refused", "edge_slow_draft", "cloud_full").
    spilled: bool = False
    spill_reason: str = ""

    @classmethod
    def from_pb(cls, decision: router_pb2.RoutingDecision) -> Decision:
        return cls(decision.policy, decision.escalated, decision.score, decision.threshold,
                   decision.route_score, decision.cached, decision.speculation_abandoned,
                   decision.spilled, decision.spill_reason)


# A streamed piece of the answer, with the tier ("edge" or "cloud") that produced it: the
# same record as a response's segments (tandem.shared.segments).
StreamChunk = Segment


@dataclass(frozen=True)
class Response:
    """A complete answer with its provenance."""

    text: str
    segments: tuple[Segment[Tier], ...]
    finish_reason: FinishReason
    usage: Usage
    decision: Decision
    # True when the cloud was unreachable or too slow and the edge answered instead
    # (on-device mode only); ``degraded_reason`` then says why.
    degraded: bool = False
    degraded_reason: str = ""
    session_id: str = ""
    time_to_first_token_s: float | None = None
    total_s: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return tuple(s.tier for s in self.segments)


def finish_name(reason: int) -> FinishReason:
    return _FINISH.get(reason, "unspecified")


# ---------------------------------------------------------------- errors
# Every failure is a TandemError carrying its gRPC status (``err.code``, ``err.message``),
# the same classes in both modes and in the services; the SDK's names for them:
TandemError = errors.TandemError
InvalidArgumentError = errors.InvalidArgument
ResourceExhaustedError = errors.ResourceExhausted  # ``retry_after``: seconds, when sent
UnavailableError = errors.Unavailable
DeadlineExceededError = errors.DeadlineExceeded
CancelledError = errors.Cancelled
FailedPreconditionError = errors.FailedPrecondition
InternalError = errors.Internal
