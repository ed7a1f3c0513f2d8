from tandem.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "messages", "sampling", "policy", "session_id", "tenant", "raw_prompt")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RAW_PROMPT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _common_pb2.Messages
    sampling: _common_pb2.SamplingParams
    policy: str
    session_id: str
    tenant: str
    raw_prompt: bool
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Union[_common_pb2.Messages, _Mapping]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., policy: _Optional[str] = ..., session_id: _Optional[str] = ..., tenant: _Optional[str] = ..., raw_prompt: _Optional[bool] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("tier", "text", "token_ids")
    TIER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.Tier
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RoutingDecision(_message.Message):
    __slots__ = ("policy", "escalated", "score", "threshold", "route_score", "draft_length", "cached", "speculation_abandoned", "pipelined_rounds", "spilled", "spill_reason", "state_degraded")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ROUTE_SCORE_FIELD_NUMBER: _ClassVar[int]
    DRAFT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    SPECULATION_ABANDONED_FIELD_NUMBER: _ClassVar[int]
    PIPELINED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SPILLED_FIELD_NUMBER: _ClassVar[int]
    SPILL_REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_DEGRADED_FIELD_NUMBER: _ClassVar[int]
    policy: str
    escalated: bool
    score: float
    threshold: float
    route_score: float
    draft_length: int
    cached: bool
    speculation_abandoned: bool
    pipelined_rounds: int
    spilled: bool
    spill_reason: str
    state_degraded: bool
    def __init__(self, policy: _Optional[str] = ..., escalated: _Optional[bool] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., route_score: _Optional[float] = ..., draft_length: _Optional[int] = ..., cached: _Optional[bool] = ..., speculation_abandoned: _Optional[bool] = ..., pipelined_rounds: _Optional[int] = ..., spilled: _Optional[bool] = ..., spill_reason: _Optional[str] = ..., state_degraded: _Optional[bool] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "segments", "finish_reason", "usage", "timings", "decision", "session_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    finish_reason: _common_pb2.FinishReason
    usage: _common_pb2.Usage
    timings: _common_pb2.Timings
    decision: RoutingDecision
    session_id: str
    def __init__(self, text: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., decision: _Optional[_Union[RoutingDecision, _Mapping]] = ..., session_id: _Optional[str] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("tier", "text", "token_ids", "finish_reason", "usage", "timings", "decision", "done")
    TIER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    tier: _common_pb2.Tier
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: _common_pb2.FinishReason
    usage: _common_pb2.Usage
    timings: _common_pb2.Timings
    decision: RoutingDecision
    done: bool
    def __init__(self, tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., decision: _Optional[_Union[RoutingDecision, _Mapping]] = ..., done: _Optional[bool] = ...) -> None: ...
