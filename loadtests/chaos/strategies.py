"""Hypothesis strategies over the request messages of the Router, Cloud and Edge services:
mostly values that must be refused (out of range, malformed names, NaN, huge, control-token
text), some valid ones (small answers, so that fuzzing costs little model time).
Imported only by the fuzz scenario (hypothesis is a test tool)."""

from __future__ import annotations

import uuid

from hypothesis import strategies as st

from tandem.v1 import cloud_pb2, common_pb2, edge_pb2, router_pb2

POLICIES = ["", "auto", "edge", "cloud", "cascade", "speculative", "route", "fastest", "AUTO"]
ROLES = ["user", "assistant", "system", "developer", "tool", "", "root"]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "\x00", "\ufffd", "\n", "{{", "}}"]
INT32 = st.integers(-2**31, 2**31 - 1)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, -0.0, 1e-40, 1e-9, 0.5, 1.0, 1.5, 100.0, 1e9, -1.0]))
TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(SPECIAL + ["hi", "system", " ", "x" * 50]), max_size=12).map("".join),
    st.sampled_from(["", " ", "Say hi.", "word " * 3000, "😀" * 200]))
# A valid-looking name, a fresh one each time (its state can be looked up afterwards).
FRESH_NAME = st.builds(lambda: f"fz-{uuid.uuid4().hex[:12]}")
NAMES = st.one_of(st.just(""), FRESH_NAME, st.text(max_size=20),
                  st.sampled_from(["a:b", "a\n", "-", "x" * 129, "../etc", "a b", "ü"]))


@st.composite
def sampling(draw: st.DrawFn, max_tokens_cap: int = 8) -> common_pb2.SamplingParams:
    params = common_pb2.SamplingParams(
        max_tokens=draw(st.one_of(st.integers(-3, max_tokens_cap),
                                  st.sampled_from([2**31 - 1, -2**31, 4097, 100_000]))))
    for name in ("temperature", "top_p", "repetition_penalty"):
        if draw(st.booleans()):
            setattr(params, name, draw(FLOATS))
    for name in ("min_p", "presence_penalty", "frequency_penalty"):
        if draw(st.integers(0, 3)) == 0:
            setattr(params, name, draw(FLOATS))
    if draw(st.integers(0, 3)) == 0:
        params.top_k = draw(INT32)
    if draw(st.integers(0, 3)) == 0:
        params.seed = draw(st.integers(0, 2**64 - 1))
    params.stop.extend(draw(st.lists(TEXT, max_size=3)))
    return params


def messages() -> st.SearchStrategy[common_pb2.Messages]:
    message = st.builds(common_pb2.ChatMessage, role=st.sampled_from(ROLES), content=TEXT)
    return st.builds(lambda ms: common_pb2.Messages(messages=ms), st.lists(message, max_size=4))


@st.composite
def router_request(draw: st.DrawFn) -> router_pb2.GenerateRequest:
    request = router_pb2.GenerateRequest(
        sampling=draw(sampling()), policy=draw(st.sampled_from(POLICIES)),
        session_id=draw(NAMES), tenant=draw(NAMES), raw_prompt=draw(st.booleans()))
    if draw(st.booleans()):
        request.prompt = draw(TEXT)
    else:
        request.messages.CopyFrom(draw(messages()))
    return request


def token_ids(vocab: int, max_size: int = 40) -> st.SearchStrategy[list[int]]:
    return st.lists(st.one_of(st.integers(0, vocab - 1), INT32), max_size=max_size)


@st.composite
def tier_request(draw: st.DrawFn, vocab: int) -> common_pb2.TierGenerateRequest:
    request = common_pb2.TierGenerateRequest(
        sampling=draw(sampling()), raw_prompt=draw(st.booleans()), logprobs=draw(st.booleans()),
        session_id=draw(NAMES), tenant=draw(NAMES))
    kind = draw(st.integers(0, 2))
    if kind == 0:
        request.prompt = draw(TEXT)
    elif kind == 1:
        request.messages.CopyFrom(draw(messages()))
    else:
        request.prompt_tokens.ids.extend(draw(token_ids(vocab)))
    return request


@st.composite
def verify_request(draw: st.DrawFn, vocab: int) -> cloud_pb2.VerifyRequest:
    draft = draw(token_ids(vocab, 70))
    request = cloud_pb2.VerifyRequest(
        session_id=draw(NAMES), tokens=draw(token_ids(vocab)), draft_tokens=draft,
        sampling=draw(sampling()), tenant=draw(NAMES))
    if draw(st.booleans()):
        request.draft_probs.extend(draw(st.lists(FLOATS, max_size=len(draft) + 1)))
    for _ in range(draw(st.integers(0, 2))):
        request.draft_distributions.add(token_ids=draw(token_ids(vocab, 5)),
                                        probs=draw(st.lists(FLOATS, max_size=5)))
    return request


@st.composite
def draft_request(draw: st.DrawFn, vocab: int) -> edge_pb2.DraftRequest:
    return edge_pb2.DraftRequest(
        session_id=draw(NAMES), tokens=draw(token_ids(vocab)),
        num_tokens=draw(st.one_of(st.integers(-2, 8), INT32)), sampling=draw(sampling()),
        tenant=draw(NAMES), return_distributions=draw(st.booleans()))


def end_session_request() -> st.SearchStrategy[cloud_pb2.EndSessionRequest]:
    return st.builds(cloud_pb2.EndSessionRequest, session_id=NAMES, tenant=NAMES)
