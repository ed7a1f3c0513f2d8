"""End to end on the real SmolLM2-135M stack: cloud (transformers, fp32), edge
(llama.cpp Q4_1) and router (Redis state), each a real gRPC server on a free port."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tandem.shared.cli.ask import build_request
from tandem.shared.process import health_status
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.conftest import start_services

pytestmark = pytest.mark.real_model

# Prompts written for these tests only; none is used anywhere else in the project.
UNSEEN_PROMPTS = [
    "Name two animals that live in the Arctic.",
    "Write one sentence about why bridges need maintenance.",
    "What does a thermometer measure?",
    "Give a short tip for learning to play the guitar.",
]


def ask(stack, prompt, **params):
    return stack.router.Generate(build_request(prompt, **params), timeout=300)


def metric(stack, service, name, labels=""):
    """A counter's value from a service's own Prometheus endpoint."""
    port = stack[service].metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.M)
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def cloud_passes(stack) -> float:
    """The cloud's forward passes, every method together."""
    return sum(metric(stack, "cloud", "tandem_cloud_forward_passes_total", f'{{method="{m}"}}')
               for m in ("Generate", "GenerateStream", "Verify"))


def test_every_service_reports_serving(real_stack):
    for name in ("cloud", "edge", "router"):
        assert health_status(real_stack[name].address) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("prompt", UNSEEN_PROMPTS)
def test_speculative_greedy_output_is_the_cloud_output(real_stack, prompt):
    cloud = ask(real_stack, prompt, policy="cloud", temperature=0.0, max_tokens=40)
    spec = ask(real_stack, prompt, policy="speculative", temperature=0.0, max_tokens=40)
    assert spec.text == cloud.text
    assert [t for s in spec.segments for t in s.token_ids] == \
        [t for s in cloud.segments for t in s.token_ids]
    assert spec.finish_reason == cloud.finish_reason
    # The point of speculation: fewer cloud passes than tokens.
    produced = spec.usage.edge_tokens + spec.usage.cloud_tokens
    assert spec.usage.cloud_forward_passes < produced
    assert {s.tier for s in spec.segments} <= {common_pb2.TIER_EDGE, common_pb2.TIER_CLOUD}


def test_pipelined_speculation_over_a_slow_link_is_the_cloud_output(real_stack, tmp_path):
    """A router whose cloud link has an 80 ms round trip (adaptive drafting on): the edge
    drafts during round trips, and the answers are still the cloud's, token for token.
    (The router drafts ahead when a round trip is worth two or more draft tokens; 80 ms is
    that with room on a machine three times slower than this one, where a draft token can
    take ~20 ms: at 40 ms one CI run here drafted ahead in no round.)"""
    router = start_services(tmp_path, [("router", [
        "--cloud-address", real_stack["cloud"].address,
        "--edge-address", real_stack["edge"].address, "--inject-cloud-rtt-ms", "80"])])[0]
    pipelined = 0
    try:
        with grpc.insecure_channel(router.address) as channel:
            slow_link = router_pb2_grpc.RouterStub(channel)
            for prompt in UNSEEN_PROMPTS:
                spec = slow_link.Generate(build_request(
                    prompt, policy="speculative", temperature=0.0, max_tokens=48), timeout=300)
                cloud = ask(real_stack, prompt, policy="cloud", temperature=0.0, max_tokens=48)
                assert [t for s in spec.segments for t in s.token_ids] == \
                    [t for s in cloud.segments for t in s.token_ids]
                pipelined += spec.decision.pipelined_rounds
    finally:
        router.stop()
    assert pipelined > 0


def test_speculative_cascade_defers_to_the_cloud_token_by_token(real_stack, tmp_path):
    """Token-level deferral on the real models. The default leniency (1) gives the cloud's
    own output. Leniency 0.5 keeps edge tokens the cloud finds nearly as likely as its own,
    so an answer may part from the cloud's, but only at a token the edge wrote: every token
    the cloud wrote is its own choice after what came before. Sampled requests are
    refused."""
    for prompt in UNSEEN_PROMPTS[:2]:
        exact = ask(real_stack, prompt, policy="speculative-cascade", temperature=0.0,
                    max_tokens=32)
        cloud = ask(real_stack, prompt, policy="cloud", temperature=0.0, max_tokens=32)
        assert [t for s in exact.segments for t in s.token_ids] == \
            [t for s in cloud.segments for t in s.token_ids]
        assert exact.decision.threshold == 1.0  # the leniency it verified with
    router = start_services(tmp_path, [("router", [
        "--cloud-address", real_stack["cloud"].address,
        "--edge-address", real_stack["edge"].address, "--deferral-leniency", "0.5",
        "--no-adaptive-draft"])])[0]
    try:
        with grpc.insecure_channel(router.address) as channel:
            lenient_router = router_pb2_grpc.RouterStub(channel)
            for prompt in UNSEEN_PROMPTS:
                lenient = lenient_router.Generate(build_request(
                    prompt, policy="speculative-cascade", temperature=0.0, max_tokens=32),
                    timeout=300)
                cloud = ask(real_stack, prompt, policy="cloud", temperature=0.0, max_tokens=32)
                written = [(s.tier, t) for s in lenient.segments for t in s.token_ids]
                ours = [t for s in cloud.segments for t in s.token_ids]
                parted = next((i for i, (_, t) in enumerate(written)
                               if i >= len(ours) or t != ours[i]), None)
                if parted is not None:
                    assert written[parted][0] == common_pb2.TIER_EDGE
                assert lenient.usage.cloud_forward_passes >= 1
                assert lenient.decision.policy == "speculative-cascade"
                assert lenient.decision.threshold == pytest.approx(0.5)
    finally:
        router.stop()
    with pytest.raises(grpc.RpcError) as sampled:
        ask(real_stack, UNSEEN_PROMPTS[0], policy="speculative-cascade", temperature=0.7)
    assert sampled.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_budget_controller_lowers_the_leniency_when_the_cloud_is_over_budget(
        real_stack, tmp_path):
    """--target-cloud-pass-share: the cloud verifies far more than 2 % of the tokens, so
    each speculative-cascade request lowers the fleet's leniency for the next one."""
    router = start_services(tmp_path, [("router", [
        "--cloud-address", real_stack["cloud"].address,
        "--edge-address", real_stack["edge"].address, "--no-adaptive-draft",
        "--target-cloud-pass-share", "0.02", "--controller-step", "0.2"])])[0]
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            leniencies = []
            for prompt in UNSEEN_PROMPTS[:3]:
                reply = stub.Generate(build_request(prompt, policy="speculative-cascade",
                                                    temperature=0.0, max_tokens=16), timeout=300)
                share = reply.usage.cloud_forward_passes / (reply.usage.edge_tokens
                                                            + reply.usage.cloud_tokens)
                assert share > 0.02
                leniencies.append(reply.decision.threshold)
    finally:
        router.stop()
    assert leniencies[0] == 1.0
    assert leniencies[1] < leniencies[0] and leniencies[2] < leniencies[1]


@pytest.mark.parametrize("scorer", ["cloud_top1_share", "cloud_combined"])
def test_a_cloud_judged_cascade_costs_one_cloud_pass_per_answer(real_stack, tmp_path, scorer):
    """--scorer cloud_top1_share / cloud_combined (the shipped head): the cloud scores the
    edge answer in one Verify pass (its forward-pass counter moves by one), the decision
    carries that score, and an accepted answer is the edge's."""
    router = start_services(tmp_path, [("router", [
        "--cloud-address", real_stack["cloud"].address,
        "--edge-address", real_stack["edge"].address, "--scorer", scorer,
        "--cascade-threshold", "0"])])[0]
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            for prompt in UNSEEN_PROMPTS[:2]:
                before = cloud_passes(real_stack)
                reply = stub.Generate(build_request(prompt, policy="cascade", max_tokens=24,
                                                    temperature=0.0), timeout=300)
                after = cloud_passes(real_stack)
                assert after - before == 1 and reply.usage.cloud_forward_passes == 1
                assert 0.0 <= reply.decision.score <= 1.0 and not reply.decision.escalated
                assert [s.tier for s in reply.segments] == [common_pb2.TIER_EDGE]
    finally:
        router.stop()


def test_edge_and_cloud_policies_label_their_tier(real_stack):
    edge = ask(real_stack, "Say hello.", policy="edge", max_tokens=16)
    cloud = ask(real_stack, "Say hello.", policy="cloud", max_tokens=16)
    assert edge.text and [s.tier for s in edge.segments] == [common_pb2.TIER_EDGE]
    assert edge.usage.cloud_forward_passes == 0 and edge.usage.edge_tokens > 0
    assert cloud.text and [s.tier for s in cloud.segments] == [common_pb2.TIER_CLOUD]
    assert cloud.usage.cloud_tokens == len(cloud.segments[0].token_ids)


def test_cascade_escalates_below_threshold_only(real_stack):
    reply = ask(real_stack, "Describe the colour blue to someone.", policy="cascade", max_tokens=24)
    d = reply.decision
    assert 0.0 <= d.score <= 1.0
    assert d.escalated == (d.score < d.threshold)
    expected_tier = common_pb2.TIER_CLOUD if d.escalated else common_pb2.TIER_EDGE
    assert [s.tier for s in reply.segments] == [expected_tier]
    assert reply.usage.edge_generated_tokens > 0


BAD_REQUESTS = [
    (dict(prompt=""), "prompt"),
    (dict(prompt="hi", max_tokens=0), "max_tokens"),
    (dict(prompt="hi", max_tokens=-5), "max_tokens"),
    (dict(prompt="hi", max_tokens=100_000), "max_tokens"),
    (dict(prompt="hi", temperature=-1.0), "temperature"),
    (dict(prompt="hi", temperature=float("nan")), "temperature"),
    (dict(prompt="hi", top_p=0.0), "top_p"),
    (dict(prompt="hi", top_p=1.5), "top_p"),
    (dict(prompt="hi", policy="fastest"), "policy"),
    (dict(prompt="word " * 9000), "prompt"),
    (dict(prompt="word " * 5000, max_tokens=4000), "max_tokens"),
    (dict(prompt="hi", session="not a valid id!"), "session_id"),
]


@pytest.mark.parametrize("fields, field_name", BAD_REQUESTS)
def test_bad_input_is_invalid_argument_and_stores_nothing(real_stack, fields, field_name):
    fields = dict(fields)
    prompt = fields.pop("prompt")
    session = f"bad-{time.monotonic_ns()}" if "session" not in fields else fields.pop("session")
    before = metric(real_stack, "cloud", "tandem_cloud_requests_total", '{method="GenerateStream"}')
    with pytest.raises(grpc.RpcError) as err:
        ask(real_stack, prompt, session=session, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field_name}:")
    # No model work was started and the session was not created.
    assert metric(real_stack, "cloud", "tandem_cloud_requests_total",
                  '{method="GenerateStream"}') == before
    if re.fullmatch(r"[A-Za-z0-9._:-]+", session):
        follow_up = ask(real_stack, "Reply with OK.", session=session, policy="edge", max_tokens=4)
        fresh = ask(real_stack, "Reply with OK.", policy="edge", max_tokens=4)
        assert follow_up.usage.prompt_tokens == fresh.usage.prompt_tokens


def test_session_continues_across_calls(real_stack):
    session = f"chat-{time.monotonic_ns()}"
    first = ask(real_stack, "My favourite fruit is mango.", session=session, policy="cloud",
                max_tokens=12)
    second = ask(real_stack, "What is my favourite fruit?", session=session, policy="cloud",
                 max_tokens=12)
    alone = ask(real_stack, "What is my favourite fruit?", policy="cloud", max_tokens=12)
    # The second turn saw the first turn and its answer (longer prompt than alone).
    assert second.usage.prompt_tokens >= alone.usage.prompt_tokens + \
        first.usage.cloud_tokens + 5
    assert second.session_id == session


def test_cancelled_stream_stops_cloud_generation(real_stack):
    labels = '{method="GenerateStream"}'
    before = metric(real_stack, "cloud", "tandem_cloud_generated_tokens_total", labels)
    request = router_pb2.GenerateRequest(
        prompt="1, 2, 3, 4, 5, 6, 7, 8,", raw_prompt=True, policy="cloud",
        sampling=common_pb2.SamplingParams(max_tokens=2000, temperature=0.0))
    stream = real_stack.router.GenerateStream(request, timeout=300)
    received = [next(stream) for _ in range(3)]
    assert all(not c.done for c in received)
    stream.cancel()
    time.sleep(2.0)
    settled = metric(real_stack, "cloud", "tandem_cloud_generated_tokens_total", labels)
    time.sleep(2.0)
    later = metric(real_stack, "cloud", "tandem_cloud_generated_tokens_total", labels)
    assert later == settled, "the cloud kept generating after the client cancelled"
    assert settled - before < 200  # it stopped long before max_tokens=2000


def test_deadline_bounds_the_whole_request(real_stack):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        real_stack.router.Generate(build_request("Write a long essay about rivers.",
                                                 policy="cloud", max_tokens=2000), timeout=1.0)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10


def test_concurrent_requests_are_all_answered(real_stack):
    results, errors = [], []

    def worker(policy):
        try:
            results.append(ask(real_stack, "Name a colour.", policy=policy, max_tokens=8))
        except grpc.RpcError as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,))
               for p in ("edge", "cloud", "speculative", "cascade") * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and len(results) == 8 and all(r.text for r in results)


def test_ask_cli_json_and_error_exit(real_stack):
    router = real_stack["router"].address
    cli = [sys.executable, "-m", "tandem.shared.cli.main", "ask", "--router", router]
    ok = subprocess.run([*cli, "--json", "--policy", "speculative", "--max-tokens", "16",
                         "--temperature", "0", "What is rain?"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    answer = json.loads(ok.stdout)
    assert answer["policy"] == "speculative" and answer["text"]
    assert "".join(s["text"] for s in answer["segments"]) == answer["text"]
    assert {s["tier"] for s in answer["segments"]} <= {"edge", "cloud"}
    assert answer["usage"]["cloud_forward_passes"] >= 1
    bad = subprocess.run([*cli, "--top-p", "2", "hi"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr and "top_p" in bad.stderr


def test_edge_reports_token_entropies_with_logprobs(real_stack):
    from tandem.v1 import edge_pb2_grpc

    with grpc.insecure_channel(real_stack["edge"].address) as channel:
        edge = edge_pb2_grpc.EdgeStub(channel)

        def generate(logprobs):
            return edge.Generate(common_pb2.TierGenerateRequest(
                prompt="Name a primary colour.", logprobs=logprobs,
                sampling=common_pb2.SamplingParams(max_tokens=8)), timeout=120)

        scored, plain = generate(True), generate(False)
    assert len(scored.entropies) == len(scored.logprobs) == len(scored.token_ids) > 0
    # Nats over a 49,152-token vocabulary: between certain (0) and uniform (ln V).
    assert all(0.0 <= h <= 10.81 for h in scored.entropies)
    assert list(plain.token_ids) == list(scored.token_ids) and not plain.entropies
