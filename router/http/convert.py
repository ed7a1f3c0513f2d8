"""OpenAI JSON <-> the router's protobuf: a request body becomes a GenerateRequest, the
core's chunks become completion objects, stream chunks and the `tandem` extras.

Only conversion is checked here (a field Tandem does not implement, a value protobuf
cannot hold); what the values mean (ranges, lengths, the policy) is checked by the core.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from google.protobuf.message import Message

from tandem.router.core import response_from_chunks
from tandem.router.http.errors import ModelNotFound
from tandem.router.http.schemas import ChatCompletionRequest, CompletionRequest, _Request
from tandem.shared.errors import InvalidArgument
from tandem.v1 import common_pb2, router_pb2

MODEL_PREFIX = "tandem-"
# OpenAI's "developer" role is the system role of newer models.
ROLE_ALIASES = {"developer": "system"}
FINISH_REASONS = {common_pb2.FINISH_REASON_STOP: "stop", common_pb2.FINISH_REASON_LENGTH: "length"}
TIERS = {common_pb2.TIER_EDGE: "edge", common_pb2.TIER_CLOUD: "cloud"}


def _refuse_unless(ok: bool, field: str, why: str) -> None:
    if not ok:
        raise InvalidArgument(f"{field}: {why}")


def _unsupported(body: _Request) -> None:
    """Refuse OpenAI features Tandem does not implement, naming the field."""
    _refuse_unless(body.n in (None, 1), "n", "only n=1 is supported")
    _refuse_unless(not body.logit_bias, "logit_bias", "not supported")
    _refuse_unless(body.stream or body.stream_options is None, "stream_options",
                   "only allowed when stream is true")
    if isinstance(body, ChatCompletionRequest):
        for name in ("tools", "functions"):
            _refuse_unless(not getattr(body, name), name, "tool and function calling are not "
                                                          "supported")
        for name in ("tool_choice", "function_call"):
            _refuse_unless(getattr(body, name) in (None, "none"), name, "only 'none' is supported")
        _refuse_unless(not body.logprobs, "logprobs", "not supported")
        _refuse_unless(not body.top_logprobs, "top_logprobs", "not supported")
        _refuse_unless(body.response_format is None
                       or body.response_format.get("type") == "text",
                       "response_format", "only type 'text' is supported")
        _refuse_unless(body.max_tokens is None or body.max_completion_tokens is None
                       or body.max_tokens == body.max_completion_tokens,
                       "max_tokens", "conflicts with max_completion_tokens")
    else:
        assert isinstance(body, CompletionRequest)
        _refuse_unless(body.logprobs is None, "logprobs", "not supported")
        _refuse_unless(not body.echo, "echo", "not supported")
        _refuse_unless(not body.suffix, "suffix", "not supported")
        _refuse_unless(body.best_of in (None, 1), "best_of", "only best_of=1 is supported")
        _refuse_unless(isinstance(body.prompt, str), "prompt",
                       "only a single string is supported")


def resolve_policy(body: _Request, policies: Iterable[str], default_policy: str) -> str:
    """The policy a request names: model tandem-<policy>, or the ``policy`` extra, which
    may stand beside the default model (clients such as the openai SDK always send one);
    "" leaves the choice to the core. Raises ModelNotFound for an unknown model."""
    known = set(policies)
    by_model = ""
    if body.model is not None:
        name = body.model.removeprefix(MODEL_PREFIX)
        if not body.model.startswith(MODEL_PREFIX) or name not in known:
            raise ModelNotFound(f"model: the model {body.model!r} does not exist; models: "
                                f"{sorted(MODEL_PREFIX + p for p in known)}")
        by_model = name
    if body.policy is None:
        return by_model
    if by_model not in ("", default_policy, body.policy):
        raise InvalidArgument(f"policy: {body.policy!r} conflicts with model {body.model!r}")
    return body.policy


def model_name(policy: str, default_policy: str) -> str:
    return MODEL_PREFIX + (policy or default_policy)


def _put(message: Message, field: str, value: Any, name: str | None = None) -> None:
    """Set a protobuf field, refusing a value it cannot hold (an int beyond its width,
    text that is not valid Unicode) as the client's mistake."""
    try:
        setattr(message, field, value)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{name or field}: value out of range or not valid text") from None


def _sampling(body: _Request, max_tokens: int | None) -> common_pb2.SamplingParams:
    sampling = common_pb2.SamplingParams()
    for field, value in (("max_tokens", max_tokens), ("temperature", body.temperature),
                         ("top_p", body.top_p), ("seed", body.seed),
                         ("presence_penalty", body.presence_penalty),
                         ("frequency_penalty", body.frequency_penalty)):
        if value is not None:
            _put(sampling, field, value)
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    for i, stop in enumerate(stops):
        try:
            sampling.stop.append(stop)
        except (ValueError, TypeError):
            raise InvalidArgument(f"stop[{i}]: not valid text") from None
    return sampling


def _base(body: _Request, policy: str, max_tokens: int | None) -> router_pb2.GenerateRequest:
    _unsupported(body)
    request = router_pb2.GenerateRequest(sampling=_sampling(body, max_tokens))
    for field, value in (("policy", policy), ("session_id", body.session_id),
                         ("tenant", body.tenant)):
        if value:
            _put(request, field, value)
    return request


def _text_of(content: str | list[dict[str, Any]] | None, where: str) -> str:
    """A message's text: a string, or its text parts joined by newlines."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        _refuse_unless(part.get("type") == "text", f"{where}[{j}].type",
                       "only content parts of type 'text' are supported")
        _refuse_unless(isinstance(part.get("text"), str), f"{where}[{j}].text", "must be a string")
        texts.append(part["text"])
    return "\n".join(texts)


def chat_request(body: ChatCompletionRequest, policy: str) -> router_pb2.GenerateRequest:
    request = _base(body, policy, body.max_completion_tokens
                    if body.max_completion_tokens is not None else body.max_tokens)
    for i, message in enumerate(body.messages):
        _refuse_unless(message.name is None, f"messages[{i}].name", "not supported")
        pb = request.messages.messages.add()
        _put(pb, "role", ROLE_ALIASES.get(message.role, message.role), f"messages[{i}].role")
        _put(pb, "content", _text_of(message.content, f"messages[{i}].content"),
             f"messages[{i}].content")
    if not body.messages:  # the core names `messages` for an empty list, too
        request.messages.SetInParent()
    return request


def completion_request(body: CompletionRequest, policy: str) -> router_pb2.GenerateRequest:
    request = _base(body, policy, body.max_tokens)
    _put(request, "prompt", body.prompt)
    request.raw_prompt = True
    return request


def _fields(message: Message) -> dict[str, Any]:
    """Every field of a flat message (defaults included), by name."""
    return {f.name: getattr(message, f.name) for f in message.DESCRIPTOR.fields}


def tandem_summary(chunks: Iterable[router_pb2.GenerateChunk], session_id: str) -> dict[str, Any]:
    """The `tandem` object of a completion: segments by tier, the decision, usage per
    tier and where the time went."""
    response = response_from_chunks(chunks, session_id)
    timings = response.timings
    return {
        "policy": response.decision.policy,
        "segments": [{"tier": TIERS.get(s.tier, "unspecified"), "text": s.text,
                      "tokens": len(s.token_ids)} for s in response.segments],
        "decision": _fields(response.decision),
        "usage": _fields(response.usage),
        "timings_ms": {f.name.removesuffix("_ns"): round(getattr(timings, f.name) / 1e6, 3)
                       for f in timings.DESCRIPTOR.fields},
        "session_id": response.session_id,
    }


def openai_usage(final: router_pb2.GenerateChunk) -> dict[str, int]:
    completion = final.usage.edge_tokens + final.usage.cloud_tokens
    return {"prompt_tokens": final.usage.prompt_tokens, "completion_tokens": completion,
            "total_tokens": final.usage.prompt_tokens + completion}


class Answer:
    """One answer in OpenAI's shapes: ``chat`` (chat.completion) or ``text``
    (text_completion), whole or as stream chunks."""

    def __init__(self, kind: str, model: str, session_id: str) -> None:
        self.kind = kind
        self.model = model
        self.session_id = session_id
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.pieces: list[router_pb2.GenerateChunk] = []  # for the final chunk's summary

    def _object(self, stream: bool) -> str:
        if self.kind == "text":
            return "text_completion"
        return "chat.completion.chunk" if stream else "chat.completion"

    def _envelope(self, stream: bool, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": self._object(stream), "created": self.created,
                "model": self.model, "choices": choices}

    def _choice(self, text: str | None, finish: str | None, stream: bool) -> dict[str, Any]:
        if self.kind == "text":
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if stream:
            delta = {} if text is None else {"content": text}
            if text is not None and len(self.pieces) == 1:
                delta["role"] = "assistant"  # the first piece opens the assistant's message
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": finish}

    def completion(self, chunks: list[router_pb2.GenerateChunk]) -> dict[str, Any]:
        """The whole answer (non-streaming)."""
        final = chunks[-1]
        text = "".join(c.text for c in chunks[:-1])
        body = self._envelope(False, [self._choice(
            text, FINISH_REASONS.get(final.finish_reason, "stop"), False)])
        body["usage"] = openai_usage(final)
        body["tandem"] = tandem_summary(chunks, self.session_id)
        return body

    def piece(self, chunk: router_pb2.GenerateChunk) -> dict[str, Any]:
        """A stream chunk of text, labelled with the tier that produced it."""
        self.pieces.append(chunk)
        body = self._envelope(True, [self._choice(chunk.text, None, True)])
        body["tandem"] = {"tier": TIERS.get(chunk.tier, "unspecified"),
                          "tokens": len(chunk.token_ids)}
        return body

    def finish(self, final: router_pb2.GenerateChunk) -> dict[str, Any]:
        """The stream chunk with the finish reason and the `tandem` summary."""
        body = self._envelope(True, [self._choice(
            None, FINISH_REASONS.get(final.finish_reason, "stop"), True)])
        body["tandem"] = tandem_summary([*self.pieces, final], self.session_id)
        return body

    def usage(self, final: router_pb2.GenerateChunk) -> dict[str, Any]:
        """The last stream chunk when stream_options.include_usage is set (no choices)."""
        body = self._envelope(True, [])
        body["usage"] = openai_usage(final)
        return body

