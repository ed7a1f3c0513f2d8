"""The OpenAI-compatible HTTP API on the real SmolLM2 stack, driven by the official
`openai` client: every policy whole and streamed, the raw-prompt completions endpoint,
the models, refusals (the gRPC bad-input cases and each unsupported feature), and a
cancelled stream stopping the cloud's work."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest

from tandem.shared.cli.ask import build_request
from tests.test_real_stack import BAD_REQUESTS, metric

pytestmark = pytest.mark.real_model

POLICIES = ["auto", "edge", "cloud", "cascade", "route", "speculative", "speculative-cascade"]
PROMPT = "Name one planet of the solar system."


@pytest.fixture(scope="module")
def client(real_stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=real_stack["router"].http_url + "/v1", api_key="open",
                         max_retries=0, timeout=300)


def tandem_of(obj) -> dict:
    """The `tandem` extra of a response or chunk (the client keeps unknown fields)."""
    return obj.model_extra["tandem"]


def test_models_are_the_policies(client):
    assert {m.id for m in client.models.list()} == {f"tandem-{p}" for p in POLICIES}
    assert client.models.retrieve("tandem-edge").id == "tandem-edge"


@pytest.mark.parametrize("policy", POLICIES)
def test_chat_completion_on_every_policy(client, policy):
    reply = client.chat.completions.create(
        model=f"tandem-{policy}", messages=[{"role": "user", "content": PROMPT}],
        max_tokens=12)
    text = reply.choices[0].message.content
    extra = tandem_of(reply)
    assert text and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.model == f"tandem-{policy}" and extra["policy"] == policy
    assert "".join(s["text"] for s in extra["segments"]) == text
    assert {s["tier"] for s in extra["segments"]} <= {"edge", "cloud"}
    usage = extra["usage"]
    assert reply.usage.completion_tokens == usage["edge_tokens"] + usage["cloud_tokens"] > 0
    assert reply.usage.prompt_tokens == usage["prompt_tokens"] > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_streamed_chat_on_every_policy_labels_each_chunk(client, policy):
    chunks = list(client.chat.completions.create(
        model=f"tandem-{policy}", messages=[{"role": "user", "content": PROMPT}],
        max_tokens=12, stream=True, stream_options={"include_usage": True}))
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.content]
    (finish,) = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert pieces and chunks[-1].choices == [] and chunks[-1].usage is not None
    assert pieces[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content for c in pieces)
    summary = tandem_of(finish)
    assert "".join(s["text"] for s in summary["segments"]) == text
    assert summary["policy"] == policy
    by_tier: dict[str, int] = {}
    for piece in pieces:
        label = tandem_of(piece)
        assert label["tier"] in ("edge", "cloud")
        by_tier[label["tier"]] = by_tier.get(label["tier"], 0) + label["tokens"]
    assert by_tier.get("edge", 0) == summary["usage"]["edge_tokens"]
    assert by_tier.get("cloud", 0) == summary["usage"]["cloud_tokens"]
    assert chunks[-1].usage.completion_tokens == sum(by_tier.values())


def test_greedy_speculative_over_http_is_tandem_ask(client, real_stack):
    prompt = "What does a compass show?"
    ask = subprocess.run(
        [sys.executable, "-m", "tandem.shared.cli.main", "ask", "--router",
         real_stack["router"].address, "--json", "--policy", "speculative",
         "--temperature", "0", "--max-tokens", "32", prompt],
        capture_output=True, text=True, timeout=300)
    assert ask.returncode == 0, ask.stderr
    reply = client.chat.completions.create(
        model="tandem-speculative", messages=[{"role": "user", "content": prompt}],
        temperature=0, max_tokens=32)
    assert reply.choices[0].message.content == json.loads(ask.stdout)["text"]


def test_completions_send_the_prompt_without_the_chat_template(client, real_stack):
    prompt = "The capital of France is"
    grpc_reply = real_stack.router.Generate(build_request(prompt, policy="cloud",
                                                          temperature=0.0, max_tokens=8),
                                            timeout=300)
    raw = build_request(prompt, policy="cloud", temperature=0.0, max_tokens=8)
    raw.raw_prompt = True
    raw_reply = real_stack.router.Generate(raw, timeout=300)
    reply = client.completions.create(model="tandem-cloud", prompt=prompt, temperature=0,
                                      max_tokens=8)
    assert reply.object == "text_completion"
    assert reply.choices[0].text == raw_reply.text != grpc_reply.text
    assert reply.usage.prompt_tokens == raw_reply.usage.prompt_tokens
    streamed = client.completions.create(model="tandem-cloud", prompt=prompt, temperature=0,
                                         max_tokens=8, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == raw_reply.text


def _bad_call(client, fields: dict, session: str):
    """A gRPC bad-input case as the same chat request over HTTP. The openai client will
    not encode NaN (not standard JSON), so that one is posted as Python's json writes it
    and its answer raised the way the client raises statuses."""
    body = {"model": "tandem-auto", "messages": [{"role": "user", "content": fields["prompt"]}],
            "session_id": fields.get("session", session),
            **{k: fields[k] for k in ("max_tokens", "temperature", "top_p", "policy")
               if k in fields}}
    if any(isinstance(v, float) and v != v for v in body.values()):
        reply = client._client.post(f"{client.base_url}chat/completions",
                                    content=json.dumps(body),
                                    headers={"Content-Type": "application/json"})
        raise client._make_status_error_from_response(reply)
    return client.chat.completions.create(
        **{k: v for k, v in body.items() if k in ("model", "messages", "max_tokens",
                                                  "temperature", "top_p")},
        extra_body={k: body[k] for k in ("session_id", "policy") if k in body})


# The gRPC cases' field as the chat endpoint names it (its prompt is a message).
CHAT_FIELD = {"prompt": "messages[0].content"}


@pytest.mark.parametrize("fields, field_name", BAD_REQUESTS)
def test_bad_input_is_a_400_naming_the_field(client, real_stack, fields, field_name):
    before = metric(real_stack, "cloud", "tandem_cloud_requests_total", '{method="GenerateStream"}')
    with pytest.raises(openai.BadRequestError) as err:
        _bad_call(client, fields, f"bad-{time.monotonic_ns()}")
    expected = CHAT_FIELD.get(field_name, field_name) if fields["prompt"] == "" else field_name
    assert err.value.body["param"] == expected
    assert err.value.body["message"].startswith(f"{expected}:")
    assert err.value.body["type"] == "invalid_request_error"
    assert metric(real_stack, "cloud", "tandem_cloud_requests_total",
                  '{method="GenerateStream"}') == before


UNSUPPORTED = [
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]},
     "messages[0].content[0].type"),
    ({"extra_body": {"unknown_option": 1}}, "unknown_option"),
]


@pytest.mark.parametrize("fields, param", UNSUPPORTED)
def test_unsupported_features_are_refused_by_name(client, fields, param):
    request = {"model": "tandem-edge", "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 4, **fields}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**request)
    assert err.value.body["param"] == param
    assert err.value.body["message"].startswith(f"{param}:")


def test_completions_refuse_what_they_do_not_support(client):
    for extra, param in (({"echo": True}, "echo"), ({"logprobs": 2}, "logprobs"),
                         ({"best_of": 3}, "best_of"), ({"suffix": "x"}, "suffix")):
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="tandem-edge", prompt="hi", max_tokens=4, **extra)
        assert err.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tandem-edge", prompt=["a", "b"], max_tokens=4)
    assert err.value.body["param"] == "prompt"


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user",
                                                                  "content": "hi"}])
    assert err.value.body["code"] == "model_not_found"


def test_cancelled_stream_stops_cloud_generation(client, real_stack):
    labels = '{method="GenerateStream"}'
    before = metric(real_stack, "cloud", "tandem_cloud_generated_tokens_total", labels)
    stream = client.completions.create(model="tandem-cloud", prompt="1, 2, 3, 4, 5, 6, 7, 8,",
                                       max_tokens=2000, temperature=0, stream=True)
    received = [next(iter(stream)) for _ in range(3)]
    assert all(c.choices[0].text is not None for c in received)
    stream.close()  # the connection closes: the router sees the client go
    time.sleep(2.0)
    settled = metric(real_stack, "cloud", "tandem_cloud_generated_tokens_total", labels)
    time.sleep(2.0)
    later = metric(real_stack, "cloud", "tandem_cloud_generated_tokens_total", labels)
    assert later == settled, "the cloud kept generating after the client went away"
    assert settled - before < 200  # it stopped long before max_tokens=2000


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_ready_and_metrics(real_stack, client):
    url = real_stack["router"].http_url
    assert _get(url + "/health") == (200, '{"status":"ok"}')
    status, body = _get(url + "/ready")
    assert status == 200 and json.loads(body)["tiers"] == {"edge": "SERVING",
                                                          "cloud": "SERVING"}
    client.models.list()
    status, text = _get(url + "/metrics")
    assert status == 200
    assert 'tandem_http_requests_total{method="GET",route="/v1/models",status="200"}' in text
    assert "tandem_router_requests_total" in text  # the router's own registry

