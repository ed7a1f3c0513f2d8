"""API keys on the real stack: a router with a keys file refuses callers without a known
key on both fronts, binds every request to its key's tenant (a body naming another
tenant neither spends that tenant's limits nor reads its sessions), limits a key to its
policies and its own rate, and answers over-limit requests 429 with a retry-after."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import openai
import pytest

from tandem.router.auth import key_hash
from tandem.shared.cli.ask import build_request
from tandem.shared.process import ServiceProcess
from tandem.v1 import router_pb2_grpc
from tests.conftest import start_services

pytestmark = pytest.mark.real_model

KEYS = {"alice": "sk-alice-7f3a", "bob": "sk-bob-91c2", "erin": "sk-erin-55d0",
        "carol": "sk-carol-edge-only", "dave": "sk-dave-sdk-2e4b"}
# Tenants' rate limit on this router: a burst of 3, then one request per 100 s.
TENANT_BURST = 3


@pytest.fixture(scope="module")
def keyed_router(real_stack, redis_server, tmp_path_factory) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp("keyed")
    lines = []
    for tenant, key in KEYS.items():
        lines += [f"[keys.{key_hash(key)}]", f'tenant = "{tenant}"']
        if tenant == "carol":
            lines += ['policies = ["edge"]', "rate_limit_rps = 0.01", "rate_limit_burst = 2"]
    (workdir / "keys.toml").write_text("\n".join(lines) + "\n")
    router = start_services(workdir, [("router", [
        "--cloud-address", real_stack["cloud"].address,
        "--edge-address", real_stack["edge"].address, "--state", redis_server.url,
        "--api-keys", str(workdir / "keys.toml"), "--rate-limit-rps", "0.01",
        "--rate-limit-burst", str(TENANT_BURST)])])[0]
    yield router
    router.stop()


def client_for(router: ServiceProcess, tenant: str | None) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.http_url + "/v1", max_retries=0, timeout=300,
                         api_key=KEYS[tenant] if tenant else "sk-not-a-key")


def chat(client: openai.OpenAI, text: str, model: str = "tandem-edge", **extra):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=4,
        temperature=0, extra_body=extra or None)


def test_missing_or_unknown_key_is_refused_on_both_fronts(keyed_router):
    with pytest.raises(openai.AuthenticationError) as err:
        chat(client_for(keyed_router, None), "hi")
    assert err.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client_for(keyed_router, None).models.list()
    with grpc.insecure_channel(keyed_router.address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        for metadata in ((), (("authorization", "Bearer sk-wrong"),)):
            with pytest.raises(grpc.RpcError) as rpc:
                stub.Generate(build_request("hi", max_tokens=2), metadata=metadata, timeout=60)
            assert rpc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.Generate(build_request("hi", policy="edge", max_tokens=2, tenant="x"),
                              metadata=(("authorization", f"Bearer {KEYS['erin']}"),),
                              timeout=300)
        assert reply.text
    log = keyed_router.log_path.read_text()
    assert not any(key in log for key in KEYS.values())  # keys are never logged


def test_a_body_naming_another_tenant_stays_its_own_keys_tenant(keyed_router):
    alice, bob = client_for(keyed_router, "alice"), client_for(keyed_router, "bob")
    session = f"notes-{time.monotonic_ns()}"
    chat(alice, "My favourite fruit is mango.", session_id=session)
    question = "What is my favourite fruit?"
    claimed = chat(bob, question, session_id=session, tenant="alice")
    fresh = chat(bob, question, tenant="alice")
    # Bob's turn did not see Alice's session: the same prompt as without any session.
    assert claimed.usage.prompt_tokens == fresh.usage.prompt_tokens
    # Bob's requests were counted against bob: his burst is spent, Alice's is not.
    with pytest.raises(openai.RateLimitError) as err:
        for _ in range(TENANT_BURST):
            chat(bob, "hi", tenant="alice")
    assert "'bob'" in err.value.body["message"]
    continued = chat(alice, question, session_id=session)
    assert continued.usage.prompt_tokens > fresh.usage.prompt_tokens  # her history is there


def test_over_the_tenants_rate_limit_is_429_with_retry_after(keyed_router):
    erin = client_for(keyed_router, "erin")
    with pytest.raises(openai.RateLimitError) as err:
        for _ in range(TENANT_BURST + 1):
            chat(erin, "hi")
    assert err.value.body["code"] == "rate_limit_exceeded"
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert float(err.value.response.headers["retry-after-ms"]) > 0


def test_a_key_is_limited_to_its_policies_and_its_own_rate(keyed_router):
    carol = client_for(keyed_router, "carol")
    assert [m.id for m in carol.models.list()] == ["tandem-edge"]
    with pytest.raises(openai.PermissionDeniedError) as err:
        chat(carol, "hi", model="tandem-cloud")
    assert err.value.body["param"] == "policy"
    with grpc.insecure_channel(keyed_router.address) as channel:
        with pytest.raises(grpc.RpcError) as rpc:
            router_pb2_grpc.RouterStub(channel).Generate(
                build_request("hi", policy="cloud", max_tokens=2),
                metadata=(("authorization", f"Bearer {KEYS['carol']}"),), timeout=60)
    assert rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A refused request does not spend the key's rate: its burst of 2 is still whole.
    with pytest.raises(openai.BadRequestError):
        carol.chat.completions.create(model="tandem-edge", temperature=-1,
                                      messages=[{"role": "user", "content": "hi"}])
    chat(carol, "hi")
    chat(carol, "hi")
    with pytest.raises(openai.RateLimitError) as limited:
        chat(carol, "hi")
    assert "API key" in limited.value.body["message"]


def test_the_sdk_sends_its_api_key(keyed_router):
    """TandemClient(api_key=...) authenticates to a router with keys; without it the SDK
    raises the typed authentication error."""
    from tandem.edge.sdk import TandemClient
    from tandem.shared.errors import Unauthenticated

    with TandemClient(mode="remote", router_address=keyed_router.address,
                      api_key=KEYS["dave"], policy="edge") as client:
        assert client.generate("Say hi.", max_tokens=4).text
    with TandemClient(mode="remote", router_address=keyed_router.address,
                      policy="edge") as anonymous, pytest.raises(Unauthenticated):
        anonymous.generate("Say hi.", max_tokens=4)
