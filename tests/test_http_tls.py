"""TLS and trusted clients on the real stack: tiers with --tls-ca refuse plaintext and
certificate-less clients (and certificates from another CA) while the router, presenting
its certificate, is served on every policy; the router's own HTTP and gRPC ports serve
TLS; a tier with --internal-token refuses calls without it."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest

from tandem.shared.cli.ask import build_request
from tandem.shared.grpc_security import TOKEN_METADATA_KEY
from tandem.shared.process import ServiceProcess, health_status
from tandem.v1 import common_pb2, edge_pb2_grpc, router_pb2_grpc
from tests.conftest import start_services

pytestmark = pytest.mark.real_model

TOKEN = "internal-3b9e1f"


def tier_request() -> common_pb2.TierGenerateRequest:
    return common_pb2.TierGenerateRequest(prompt="Say hi.",
                                          sampling=common_pb2.SamplingParams(max_tokens=2))


def tls_args(pki: dict[str, str], name: str) -> list[str]:
    return ["--tls-cert", pki[name], "--tls-key", pki[f"{name}_key"], "--tls-ca", pki["ca"]]


@pytest.fixture(scope="module")
def mtls_stack(pki, tmp_path_factory) -> Iterator[dict[str, ServiceProcess]]:
    """Cloud and edge that only serve clients with a certificate from the test CA, and a
    router that presents its certificate to them and serves TLS itself."""
    workdir = tmp_path_factory.mktemp("mtls")
    cloud, edge = start_services(workdir, [("cloud", tls_args(pki, "tier")),
                                           ("edge", tls_args(pki, "tier"))])
    try:
        router = start_services(workdir, [("router", [
            "--cloud-address", cloud.address, "--edge-address", edge.address,
            *tls_args(pki, "router")])])[0]
    except BaseException:
        edge.stop()
        cloud.stop()
        raise
    yield {"cloud": cloud, "edge": edge, "router": router}
    for service in (router, edge, cloud):
        service.stop()


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def test_mtls_tier_refuses_plaintext_certless_and_foreign_clients(mtls_stack, pki):
    address = mtls_stack["edge"].address
    refused = {
        "plaintext": grpc.insecure_channel(address),
        "no certificate": grpc.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=_read(pki["ca"]))),
        "another CA's certificate": grpc.secure_channel(address, grpc.ssl_channel_credentials(
            _read(pki["ca"]), _read(pki["rogue_key"]), _read(pki["rogue"]))),
    }
    for name, channel in refused.items():
        with channel, pytest.raises(grpc.RpcError) as err:
            edge_pb2_grpc.EdgeStub(channel).Generate(tier_request(), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, name
    trusted = grpc.ssl_channel_credentials(_read(pki["ca"]), _read(pki["router_key"]),
                                           _read(pki["router"]))
    with grpc.secure_channel(address, trusted) as channel:
        assert edge_pb2_grpc.EdgeStub(channel).Generate(tier_request(), timeout=120).token_ids


@pytest.mark.parametrize("policy", ["edge", "cloud", "speculative"])
def test_router_with_its_certificate_is_served_over_tls(mtls_stack, pki, policy):
    router = mtls_stack["router"]
    assert router.http_url.startswith("https://")
    client = openai.OpenAI(base_url=router.http_url + "/v1", api_key="open", max_retries=0,
                           timeout=300, http_client=openai.DefaultHttpxClient(
                               verify=ssl.create_default_context(cafile=pki["ca"])))
    reply = client.chat.completions.create(
        model=f"tandem-{policy}", messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=6)
    assert reply.choices[0].message.content
    credentials = grpc.ssl_channel_credentials(root_certificates=_read(pki["ca"]))
    with grpc.secure_channel(router.address, credentials) as channel:
        answer = router_pb2_grpc.RouterStub(channel).Generate(
            build_request("Say hello.", policy=policy, max_tokens=6), timeout=300)
    assert answer.text


def test_router_http_port_refuses_plaintext(mtls_stack):
    plain = openai.OpenAI(base_url=mtls_stack["router"].http_url.replace("https", "http") + "/v1",
                          api_key="open", max_retries=0, timeout=30)
    with pytest.raises(openai.APIError):
        plain.models.list()


def test_internal_token_guards_a_tier(real_stack, tmp_path):
    edge = start_services(tmp_path, [("edge", ["--internal-token", TOKEN])])[0]
    try:
        assert health_status(edge.address) == 1  # probes need no token
        with grpc.insecure_channel(edge.address) as channel:
            stub = edge_pb2_grpc.EdgeStub(channel)
            for metadata in ((), ((TOKEN_METADATA_KEY, "guess"),)):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Generate(tier_request(), metadata=metadata, timeout=30)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert stub.Generate(tier_request(), metadata=((TOKEN_METADATA_KEY, TOKEN),),
                                 timeout=120).token_ids
        routers = []
        try:
            for name, token in (("with", ["--internal-token", TOKEN]), ("without", [])):
                (tmp_path / name).mkdir()
                routers += start_services(tmp_path / name, [("router", [
                    "--cloud-address", real_stack["cloud"].address,
                    "--edge-address", edge.address, *token])])
            with_token, without = (
                openai.OpenAI(base_url=r.http_url + "/v1", api_key="open", max_retries=0,
                              timeout=300) for r in routers)
            request = {"model": "tandem-edge", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "Say hi."}]}
            assert with_token.chat.completions.create(**request).choices[0].message.content
            # the tier refusing the router's credentials is a dependency down (503), not
            # the client's key (401)
            with pytest.raises(openai.APIStatusError) as refused:
                without.chat.completions.create(**request)
            assert refused.value.status_code == 503
        finally:
            for router in routers:
                router.stop()
    finally:
        edge.stop()


def test_the_sdk_reaches_a_tls_router_and_an_mtls_cloud(mtls_stack, pki):
    """Remote mode over the router's TLS port; on-device mode to a cloud that asks for a
    client certificate (presenting one from the CA, as a provisioned device would)."""
    from tandem.edge.sdk import TandemClient

    with TandemClient(mode="remote", router_address=mtls_stack["router"].address,
                      tls_ca=pki["ca"], policy="cloud") as remote:
        assert remote.generate("Say hello.", max_tokens=6).text
    with TandemClient(mode="on_device", cloud_address=mtls_stack["cloud"].address,
                      tls_ca=pki["ca"], tls_cert=pki["router"], tls_key=pki["router_key"],
                      threads=1, policy="cloud", offline_fallback=False) as device:
        reply = device.generate("Say hello.", max_tokens=6)
        assert reply.tiers == ("cloud",) and not reply.degraded
    with pytest.raises(ValueError, match="go together"):
        TandemClient(mode="remote", tls_cert=pki["router"])
