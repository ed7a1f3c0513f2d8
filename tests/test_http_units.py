"""The HTTP API's and API keys' pure parts, without a model: reading keys files,
authenticating a bearer value, turning OpenAI bodies into GenerateRequests (and refusing
what Tandem does not do, by field), choosing the policy from the model, and the status
table."""

from __future__ import annotations

import json

import grpc
import pytest

from tandem.router.auth import KeyRing, key_hash
from tandem.router.http.convert import chat_request, completion_request, resolve_policy
from tandem.router.http.errors import HTTP_STATUS, ModelNotFound, tandem_error_body
from tandem.router.http.schemas import ChatCompletionRequest, CompletionRequest
from tandem.shared.errors import (InvalidArgument, PermissionDenied, ResourceExhausted,
                                  Unauthenticated, error_for)

POLICIES = ["auto", "edge", "cloud", "cascade", "speculative"]


def test_keys_file_in_toml_and_json(tmp_path):
    digest = key_hash("sk-one")
    toml = tmp_path / "keys.toml"
    toml.write_text(f'[keys.{digest}]\ntenant = "acme"\npolicies = ["edge"]\n'
                    "rate_limit_rps = 2.0\nrate_limit_burst = 4\n")
    as_json = tmp_path / "keys.json"
    as_json.write_text(json.dumps({"keys": {digest.upper(): {"tenant": "acme"}}}))
    key = KeyRing.load(toml, set(POLICIES)).authenticate("Bearer sk-one")
    assert (key.tenant, key.allows("edge"), key.allows("cloud")) == ("acme", True, False)
    assert (key.rate_limit_rps, key.rate_limit_burst) == (2.0, 4)
    assert KeyRing.load(as_json).authenticate("bearer  sk-one ").allows("cloud")


@pytest.mark.parametrize("content, complaint", [
    ("[keys.abc]\ntenant = 'a'\n", "SHA-256"),
    (f"[keys.{key_hash('k')}]\ntenant = 'not valid!'\n", "tenant"),
    (f"[keys.{key_hash('k')}]\ntenant = 'a'\nquota = 3\n", "unknown fields"),
    (f"[keys.{key_hash('k')}]\ntenant = 'a'\npolicies = ['fastest']\n", "unknown policies"),
    (f"[keys.{key_hash('k')}]\ntenant = 'a'\nrate_limit_rps = 1\n", "burst"),
    ("title = 'no keys'\n", "'keys'"),
])
def test_a_bad_keys_file_is_refused_naming_the_problem(tmp_path, content, complaint):
    path = tmp_path / "keys.toml"
    path.write_text(content)
    with pytest.raises(ValueError, match=complaint):
        KeyRing.load(path, set(POLICIES))


def test_authentication_refuses_without_echoing_the_key(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text(f'[keys.{key_hash("sk-real")}]\ntenant = "acme"\n')
    keys = KeyRing.load(path)
    for header in (None, "", "sk-real", "Basic sk-real", "Bearer sk-guess"):
        with pytest.raises(Unauthenticated) as err:
            keys.authenticate(header)
        assert "sk-" not in err.value.message


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], **fields})


def test_chat_body_becomes_a_generate_request():
    request = chat_request(chat(
        messages=[{"role": "developer", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "a"},
                                               {"type": "text", "text": "b"}]}],
        max_completion_tokens=7, temperature=0.5, top_p=0.9, seed=3, stop="END",
        session_id="s1", tenant="t1"), "cloud")
    assert [(m.role, m.content) for m in request.messages.messages] == [
        ("system", "Be brief."), ("user", "a\nb")]
    s = request.sampling
    assert (s.max_tokens, s.temperature, round(s.top_p, 3), s.seed, list(s.stop)) == (
        7, 0.5, 0.9, 3, ["END"])
    assert (request.policy, request.session_id, request.tenant, request.raw_prompt) == (
        "cloud", "s1", "t1", False)
    raw = completion_request(CompletionRequest.model_validate(
        {"prompt": "1, 2,", "max_tokens": 4, "stop": ["\n", "."]}), "")
    assert (raw.prompt, raw.raw_prompt, list(raw.sampling.stop)) == ("1, 2,", True, ["\n", "."])


@pytest.mark.parametrize("fields, param", [
    ({"n": 3}, "n"), ({"tools": [{"type": "function"}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"), ({"function_call": "auto"}, "function_call"),
    ({"logprobs": True}, "logprobs"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"logit_bias": {"1": 1.0}}, "logit_bias"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"max_tokens": 4, "max_completion_tokens": 5}, "max_tokens"),
    ({"max_tokens": 2 ** 40}, "max_tokens"), ({"seed": -1}, "seed"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "hi", "name": "ada"}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "messages[0].content[0].type"),
])
def test_unsupported_or_unrepresentable_fields_are_refused_by_name(fields, param):
    with pytest.raises(InvalidArgument) as err:
        chat_request(chat(**fields), "")
    assert err.value.message.startswith(f"{param}:")


def test_the_model_names_the_policy():
    assert resolve_policy(chat(), POLICIES, "auto") == ""
    assert resolve_policy(chat(model="tandem-cloud"), POLICIES, "auto") == "cloud"
    assert resolve_policy(chat(model="tandem-auto", policy="edge"), POLICIES, "auto") == "edge"
    assert resolve_policy(chat(policy="fastest"), POLICIES, "auto") == "fastest"  # core refuses
    with pytest.raises(InvalidArgument, match="^policy:"):
        resolve_policy(chat(model="tandem-cloud", policy="edge"), POLICIES, "auto")
    for model in ("gpt-4o", "tandem-route", "tandem-"):
        with pytest.raises(ModelNotFound):
            resolve_policy(chat(model=model), POLICIES, "auto")


def test_every_client_status_maps_below_500_and_rate_limits_say_when():
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
                 grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.RESOURCE_EXHAUSTED):
        assert HTTP_STATUS[code][0] < 500
    assert [HTTP_STATUS[c][0] for c in (grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.DEADLINE_EXCEEDED)] == [503, 504]
    status, body = tandem_error_body(InvalidArgument("top_p: must be in (0, 1], got 2"))
    assert (status, body["error"]["param"], body["error"]["type"]) == (
        400, "top_p", "invalid_request_error")
    assert tandem_error_body(PermissionDenied("policy: no"))[0] == 403
    assert tandem_error_body(ResourceExhausted("slow down", 0.2))[1]["error"]["code"] == \
        "rate_limit_exceeded"
    assert tandem_error_body(error_for(grpc.StatusCode.UNAVAILABLE, "edge: down"))[1][
        "error"]["param"] is None
