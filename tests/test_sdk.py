"""The edge client SDK against real services: on-device mode (llama.cpp edge and the
router's policies in this process, the real cloud service over gRPC) and remote mode
(the real router). Offline behaviour uses a cloud address nobody listens on and a
socket that accepts connections but never answers."""

from __future__ import annotations

import asyncio
import socket
import time
import re
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from tandem.edge.sdk.client import AsyncTandemClient, TandemClient
from tandem.edge.sdk.types import (DeadlineExceededError, InvalidArgumentError,
                                   UnavailableError)
from tandem.shared.process import free_port

pytestmark = pytest.mark.real_model

PROMPT = "Name three colours."


def cloud_metric(stack, name: str, labels: str = "") -> float:
    port = stack["cloud"].metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def device(real_stack) -> Iterator[TandemClient]:  # type: ignore[no-untyped-def]
    """An on-device client whose cloud is the real stack's cloud service."""
    client = TandemClient(mode="on_device", cloud_address=real_stack["cloud"].address,
                          threads=1, deadline_s=120, policy="edge")
    yield client
    client.close()


@pytest.fixture(scope="module")
def remote(real_stack) -> Iterator[TandemClient]:  # type: ignore[no-untyped-def]
    client = TandemClient(mode="remote", router_address=real_stack["router"].address,
                          deadline_s=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def silent_cloud() -> Iterator[str]:
    """A TCP listener that never speaks HTTP/2: calls to it hang until their deadline."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_on_device_edge_answer_has_provenance_and_usage(device):
    reply = device.generate(PROMPT, max_tokens=12, temperature=0)
    assert reply.text.strip()
    assert reply.tiers == ("edge",)
    assert reply.usage.edge_tokens == len(reply.segments[0].token_ids) > 0
    assert reply.usage.cloud_tokens == 0
    assert reply.usage.prompt_tokens > 0
    assert not reply.degraded and reply.decision.policy == "edge"


def test_on_device_escalates_to_the_cloud(device):
    reply = device.generate(PROMPT, policy="cloud", max_tokens=12, temperature=0)
    assert reply.tiers == ("cloud",) and reply.usage.cloud_tokens > 0
    assert not reply.degraded


def test_on_device_speculative_is_the_cloud_answer(device):
    cloud = device.generate(PROMPT, policy="cloud", max_tokens=16, temperature=0)
    spec = device.generate(PROMPT, policy="speculative", max_tokens=16, temperature=0)
    assert spec.text == cloud.text  # lossless: verified by the real cloud
    assert spec.usage.draft_tokens > 0


def test_on_device_stream_yields_tiered_chunks(device):
    stream = device.stream(PROMPT, max_tokens=10, temperature=0)
    chunks = list(stream)
    assert chunks and all(c.tier == "edge" and c.token_ids for c in chunks)
    assert stream.response is not None
    assert stream.response.text == "".join(c.text for c in chunks)
    assert stream.response.finish_reason in ("stop", "length")


BAD_CALLS = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": PROMPT, "temperature": -1.0}, "temperature"),
    ({"prompt": PROMPT, "top_p": 1.5}, "top_p"),
    ({"prompt": PROMPT, "max_tokens": 10**6}, "max_tokens"),
    ({"prompt": PROMPT, "policy": "nonsense"}, "policy"),
    ({"prompt": PROMPT, "session_id": "bad id!"}, "session_id"),
]


@pytest.mark.parametrize("mode", ["device", "remote"])
@pytest.mark.parametrize("call,field", BAD_CALLS)
def test_bad_input_is_a_typed_invalid_argument(request, mode, call, field):
    client = request.getfixturevalue(mode)
    before = client.stats.degraded
    with pytest.raises(InvalidArgumentError) as err:
        client.generate(**call)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.message
    assert client.stats.degraded == before  # bad input never falls back


def test_cancelled_on_device_stream_stops_edge_and_cloud(device, real_stack):
    engine = device._client._engine
    edge_tokens = engine.tiers.edge.handler.metrics.tokens.labels("GenerateStream")
    stream = device.stream("Count from one to five hundred.", max_tokens=1500, temperature=0)
    first = [next(stream) for _ in range(3)]
    stream.cancel()
    assert all(c.tier == "edge" for c in first)
    settled = edge_tokens._value.get()
    time.sleep(0.5)
    assert edge_tokens._value.get() == settled
    assert engine.backend.load().running == 0  # the model is free for the next request

    labels = '{method="GenerateStream"}'
    before = cloud_metric(real_stack, "tandem_cloud_generated_tokens_total", labels)
    stream = device.stream("1, 2, 3, 4, 5, 6, 7, 8,", raw_prompt=True, policy="cloud",
                           max_tokens=1500, temperature=0)
    assert next(stream).tier == "cloud"
    stream.cancel()
    time.sleep(2.0)
    settled = cloud_metric(real_stack, "tandem_cloud_generated_tokens_total", labels)
    time.sleep(1.5)
    assert cloud_metric(real_stack, "tandem_cloud_generated_tokens_total", labels) == settled
    assert settled - before < 300  # far below max_tokens=1500
    assert list(stream) == []  # a cancelled stream ends


@pytest.mark.parametrize("mode", ["device", "remote"])
def test_a_session_keeps_its_history(request, mode):
    client = request.getfixturevalue(mode)
    session = client.chat_session(system="You are terse.")
    first = session.send("My name is Ada.", max_tokens=8, temperature=0, policy="edge")
    second = session.send("What is my name?", max_tokens=8, temperature=0, policy="edge")
    # The second prompt holds the first turn and its answer.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.edge_tokens
    assert [t["role"] for t in session.history] == ["system", "user", "assistant", "user",
                                                    "assistant"]
    assert session.history[2]["content"] == first.text


def test_remote_stream_and_async_client(real_stack):
    async def run() -> tuple[str, list[str]]:
        async with AsyncTandemClient(mode="remote",
                                     router_address=real_stack["router"].address) as client:
            reply = await client.generate(PROMPT, policy="cloud", max_tokens=8, temperature=0)
            tiers = [c.tier async for c in client.stream(PROMPT, policy="edge", max_tokens=6)]
            return reply.text, tiers

    text, tiers = asyncio.run(run())
    assert text.strip() and tiers and set(tiers) == {"edge"}


def test_cloud_down_answers_from_the_edge_degraded_within_deadline():
    client = TandemClient(mode="on_device", cloud_address=f"127.0.0.1:{free_port()}",
                          threads=1, policy="cloud")
    try:
        started = time.monotonic()
        reply = client.generate(PROMPT, max_tokens=12, temperature=0, deadline_s=10)
        assert time.monotonic() - started < 10
        assert reply.degraded and "unavailable" in reply.degraded_reason.lower()
        assert reply.tiers == ("edge",) and reply.text.strip()
        assert client.stats.degraded == 1
        chunks = list(client.stream(PROMPT, policy="speculative", max_tokens=8, deadline_s=10))
        assert chunks and {c.tier for c in chunks} == {"edge"}
        assert client.stats.degraded == 2
    finally:
        client.close()


def test_silent_cloud_is_abandoned_in_time(silent_cloud):
    client = TandemClient(mode="on_device", cloud_address=silent_cloud, threads=1,
                          policy="cloud", edge_reserve_s=3.0)
    try:
        started = time.monotonic()
        reply = client.generate(PROMPT, max_tokens=8, temperature=0, deadline_s=8)
        elapsed = time.monotonic() - started
        assert reply.degraded and reply.tiers == ("edge",)
        assert 4.0 <= elapsed < 8.0  # waited for the cloud's share, answered before the deadline
        with pytest.raises(DeadlineExceededError):  # fallback off: the deadline is the answer
            _no_fallback(silent_cloud)
    finally:
        client.close()


def _no_fallback(address: str) -> None:
    client = TandemClient(mode="on_device", cloud_address=address, threads=1, policy="cloud",
                          offline_fallback=False)
    try:
        client.generate(PROMPT, max_tokens=8, deadline_s=2.0)
    finally:
        client.close()


def test_unavailable_router_is_retried_then_raised():
    client = TandemClient(mode="remote", router_address=f"127.0.0.1:{free_port()}",
                          max_retries=2, retry_backoff_s=0.05)
    try:
        with pytest.raises(UnavailableError) as err:
            client.generate(PROMPT, deadline_s=10)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert client.stats.retries == 2
    finally:
        client.close()


def test_an_on_device_torch_chat_stays_within_its_kv_budget():
    """On-device sessions on the torch backend hold the KV cache to ``kv_budget`` tokens
    (H2O eviction) however long the chat grows; the answers go on."""
    client = TandemClient(mode="on_device", cloud_address=f"127.0.0.1:{free_port()}",
                          backend="torch", kv_budget="48", threads=1, policy="edge",
                          deadline_s=120)
    try:
        runtime = client._client._engine.backend.runtime
        session = client.chat_session(system="You are terse.")
        for question in ("Name a colour.", "Name a fruit.", "Name a city.", "Name a tree."):
            reply = session.send(question, max_tokens=8, temperature=0)
            assert reply.text.strip() and runtime.length <= 48
        assert runtime.position > 48  # the chat outgrew the budget
    finally:
        client.close()
