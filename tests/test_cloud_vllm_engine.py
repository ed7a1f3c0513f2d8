"""`tandem serve cloud --engine vllm` on the real model: the same Cloud contract as the
built-in engine. Greedy Generate and Verify give the built-in engine's tokens; a sampled
Verify is refused with FAILED_PRECONDITION; the router, unchanged, decodes speculatively
over it with the cloud-only output. Skipped where vLLM is not installed
(scripts/install-vllm.sh); the service starts itself under vLLM's venv."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tandem.cloud.peers import vllm_peer
from tandem.shared.cli.ask import build_request
from tandem.v1 import cloud_pb2, cloud_pb2_grpc, common_pb2, router_pb2_grpc
from tandem.shared.process import ServiceProcess
from tests.conftest import Stack, start_services
from tests.test_real_stack import metric


def vllm_installed() -> bool:
    try:
        return vllm_peer.peer_python(None).is_file()
    except vllm_peer.PeerUnavailable:
        return False


pytestmark = [pytest.mark.real_model, pytest.mark.vllm,
              pytest.mark.skipif(not vllm_installed(),
                                 reason="vLLM is not installed (scripts/install-vllm.sh)")]

PROMPTS = ["Name two animals that live in the Arctic.", "What does a thermometer measure?"]
GREEDY = common_pb2.SamplingParams(max_tokens=1)


@pytest.fixture(scope="module")
def vllm_stack(tmp_path_factory, redis_server, real_stack) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """A cloud on vLLM and a router over it and the real stack's edge."""
    workdir = tmp_path_factory.mktemp("vllm-stack")
    cloud = start_services(workdir, [("cloud", ["--engine", "vllm"])])[0]
    try:
        router = start_services(workdir, [("router", [
            "--cloud-address", cloud.address, "--edge-address", real_stack["edge"].address,
            "--state", redis_server.url, "--no-adaptive-draft"])])[0]
    except BaseException:
        cloud.stop()
        raise
    stack = Stack([cloud, router])
    yield stack
    stack.stop()


def cloud_stub(service: ServiceProcess, channel_list: list[grpc.Channel]) -> cloud_pb2_grpc.CloudStub:
    channel = grpc.insecure_channel(service.address)
    channel_list.append(channel)
    return cloud_pb2_grpc.CloudStub(channel)


@pytest.fixture
def clouds(vllm_stack, real_stack):  # type: ignore[no-untyped-def]
    """(vLLM's Cloud stub, the built-in engine's)."""
    channels: list[grpc.Channel] = []
    yield cloud_stub(vllm_stack["cloud"], channels), cloud_stub(real_stack["cloud"], channels)
    for channel in channels:
        channel.close()


def generate(stub: cloud_pb2_grpc.CloudStub, prompt: str, n: int) -> list[int]:
    request = common_pb2.TierGenerateRequest(
        prompt=prompt, sampling=common_pb2.SamplingParams(max_tokens=n))
    return list(stub.Generate(request, timeout=300).token_ids)


def test_greedy_generate_is_the_built_in_engines(clouds) -> None:  # type: ignore[no-untyped-def]
    on_vllm, builtin = clouds
    info = on_vllm.Info(common_pb2.InfoRequest(), timeout=30)
    assert info.backend == "vllm"
    for prompt in PROMPTS:
        assert generate(on_vllm, prompt, 32) == generate(builtin, prompt, 32)


def test_verify_accepts_and_corrects_as_the_built_in_engine(clouds) -> None:  # type: ignore[no-untyped-def]
    on_vllm, builtin = clouds
    # A context of the chat template's tokens and a question, and the built-in engine's
    # greedy continuation of it: drafts all right, wrong at one place, wrong at once.
    tokens = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28,
              7018, 411, 407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 1072, 253, 29327, 2621,
              47, 2, 198, 1, 520, 9531, 198]  # "What does a thermometer measure?", rendered
    truth = list(builtin.Generate(common_pb2.TierGenerateRequest(
        prompt_tokens=common_pb2.TokenIds(ids=tokens),
        sampling=common_pb2.SamplingParams(max_tokens=8)), timeout=300).token_ids)
    assert len(truth) >= 4
    for draft in (truth[:4], truth[:2] + [truth[2] + 1, truth[3]], [truth[0] + 1]):
        request = cloud_pb2.VerifyRequest(session_id="s", tokens=tokens, draft_tokens=draft,
                                          sampling=GREEDY, score_draft=True)
        got, want = on_vllm.Verify(request, timeout=300), builtin.Verify(request, timeout=300)
        assert (got.accepted, got.next_token) == (want.accepted, want.next_token)
        assert list(got.draft_ranks)[:got.accepted] == [0] * got.accepted
    with pytest.raises(grpc.RpcError) as refused:
        on_vllm.Verify(cloud_pb2.VerifyRequest(
            session_id="s", tokens=tokens, draft_tokens=truth[:3],
            sampling=common_pb2.SamplingParams(max_tokens=1, temperature=0.7)), timeout=60)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "built-in cloud engine" in refused.value.details()


def test_speculative_over_vllm_is_the_cloud_only_output(vllm_stack) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(vllm_stack["router"].address) as channel:
        router = router_pb2_grpc.RouterStub(channel)
        for prompt in PROMPTS:
            cloud = router.Generate(build_request(prompt, policy="cloud", temperature=0.0,
                                                  max_tokens=32), timeout=300)
            spec = router.Generate(build_request(prompt, policy="speculative",
                                                 temperature=0.0, max_tokens=32), timeout=300)
            assert spec.text == cloud.text
            produced = spec.usage.edge_tokens + spec.usage.cloud_tokens
            assert spec.usage.cloud_forward_passes < produced


def test_vllms_statistics_are_exported_under_tandems_metric_names(vllm_stack, clouds) -> None:  # type: ignore[no-untyped-def]
    on_vllm, _ = clouds
    generate(on_vllm, PROMPTS[0], 8)
    generate(on_vllm, PROMPTS[0], 8)  # the same prompt again: its prefix is cached
    on_vllm.Verify(cloud_pb2.VerifyRequest(session_id="m", tokens=[1, 9690, 198, 2683],
                                           draft_tokens=[359, 253], sampling=GREEDY), timeout=300)

    def value(name: str) -> float:
        return metric(vllm_stack, "cloud", name, "")

    assert value("tandem_cloud_time_to_first_token_seconds_count") >= 2
    assert value("tandem_cloud_e2e_request_latency_seconds_count") >= 2
    assert value("tandem_cloud_engine_steps_total") >= 16
    assert value("tandem_cloud_prefix_cache_hits_total") > 0
    assert value("tandem_cloud_prefix_cache_queries_total") > value(
        "tandem_cloud_prefix_cache_hits_total")
    assert value("tandem_cloud_spec_decode_num_drafts_total") >= 1
    assert value("tandem_cloud_spec_decode_num_draft_tokens_total") >= 2
