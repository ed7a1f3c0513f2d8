"""The SDK's public types: responses with provenance, stream chunks, usage, the routing
decision, and typed errors that carry the gRPC status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import grpc

from tandem.shared import errors as shared_errors
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

    @classmethod
    def from_pb(cls, decision: router_pb2.RoutingDecision) -> Decision:
        return cls(decision.policy, decision.escalated, decision.score, decision.threshold,
                   decision.route_score, decision.cached, decision.speculation_abandoned)


@dataclass(frozen=True)
class StreamChunk:
    """A streamed piece of the answer and the tier that produced it."""

    tier: Tier
    text: str
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Segment:
    """A contiguous piece of the answer produced by one tier."""

    tier: Tier
    text: str
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Response:
    """A complete answer with its provenance."""

    text: str
    segments: tuple[Segment, ...]
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


def merge_segments(chunks: list[StreamChunk]) -> tuple[Segment, ...]:
    segments: list[Segment] = []
    for chunk in chunks:
        if segments and segments[-1].tier == chunk.tier:
            last = segments[-1]
            segments[-1] = Segment(last.tier, last.text + chunk.text,
                                   last.token_ids + chunk.token_ids)
        else:
            segments.append(Segment(chunk.tier, chunk.text, chunk.token_ids))
    return tuple(segments)


def finish_name(reason: int) -> FinishReason:
    return _FINISH.get(reason, "unspecified")


# ---------------------------------------------------------------- errors


class TandemError(Exception):
    """An SDK call failed; ``code`` is the gRPC status (the same in both modes)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgumentError(TandemError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhaustedError(TandemError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, code: grpc.StatusCode | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, code)
        self.retry_after = retry_after  # seconds, when the server said


class UnavailableError(TandemError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(TandemError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class CancelledError(TandemError):
    code = grpc.StatusCode.CANCELLED


class FailedPreconditionError(TandemError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class InternalError(TandemError):
    code = grpc.StatusCode.INTERNAL


_ERROR_CLASSES: dict[grpc.StatusCode, type[TandemError]] = {
    cls.code: cls for cls in (InvalidArgumentError, ResourceExhaustedError, UnavailableError,
                              DeadlineExceededError, CancelledError, FailedPreconditionError,
                              InternalError)}


def error_for(code: grpc.StatusCode, message: str,
              retry_after: float | None = None) -> TandemError:
    cls = _ERROR_CLASSES.get(code, TandemError)
    if cls is ResourceExhaustedError:
        return ResourceExhaustedError(message, code, retry_after)
    return cls(message, code)


def from_rpc_error(exc: grpc.aio.AioRpcError) -> TandemError:
    """The typed error for a failed call to a Tandem service."""
    retry_after = None
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after-ms":
            retry_after = int(value) / 1000
    return error_for(exc.code(), exc.details() or exc.code().name, retry_after)


def from_local_error(exc: shared_errors.TandemError) -> TandemError:
    """The typed error for a failure inside the in-process router or edge."""
    retry_after = getattr(exc, "retry_after_s", None)
    return error_for(exc.code, str(exc), retry_after)
