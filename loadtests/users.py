"""Streaming-aware locust users for the Router and the Cloud gRPC services.

Every request is a server-streaming call, timed chunk by chunk: time to first token,
inter-chunk latencies, end-to-end latency, output tokens per producing tier, and the
router's decision and usage from the final chunk. Each request becomes one locust
request event (so locust's CSV/HTML see it) carrying a `RequestRecord` in its context,
which the locustfile writes out for `report.summarize`.

grpcio needs `grpc.experimental.gevent.init_gevent()` before any channel is created;
the locustfile calls it in locust's `init` event.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import Any

import gevent
import grpc
from locust import User, task
from locust.exception import StopUser
from locust.stats import CSV_STATS_INTERVAL_SEC

from tandem.loadtests.records import REJECTED_CODE, RequestRecord, tier_name
from tandem.loadtests.workload import Chat, Pacer, Workload, weighted_choice
from tandem.v1 import cloud_pb2_grpc, common_pb2, router_pb2, router_pb2_grpc


class _StreamClock:
    """Marks the arrival of each chunk that carries output."""

    def __init__(self, record: RequestRecord) -> None:
        self.record = record
        self.started = time.perf_counter()
        self.last: float | None = None
        record.start_unix = time.time()

    def output(self, tier: str, tokens: int) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.record.ttft_s = now - self.started
        else:
            self.record.itl_s.append(now - self.last)
        self.last = now
        self.record.tokens_by_tier[tier] = self.record.tokens_by_tier.get(tier, 0) + tokens

    def end(self) -> None:
        self.record.e2el_s = time.perf_counter() - self.started


def _timed(record: RequestRecord, chunks: Iterable[Any], on_chunk: Any) -> RequestRecord:
    clock = _StreamClock(record)
    try:
        for chunk in chunks:
            on_chunk(clock, chunk)
    except grpc.RpcError as exc:
        record.code = exc.code().name
        record.error = exc.details() or ""
    clock.end()
    return record


def stream_router(stub: router_pb2_grpc.RouterStub, request: router_pb2.GenerateRequest,
                  record: RequestRecord, timeout_s: float) -> RequestRecord:
    """Router.GenerateStream, timed; the final chunk's decision and usage fill the record."""

    def on_chunk(clock: _StreamClock, chunk: router_pb2.GenerateChunk) -> None:
        if chunk.done:
            record.resolved_policy = chunk.decision.policy
            record.escalated = chunk.decision.escalated
            # Routers built before the response cache have no `cached` field.
            record.cached = bool(getattr(chunk.decision, "cached", False))
            usage, timings = chunk.usage, chunk.timings
            record.edge_s, record.cloud_s = timings.edge_ns / 1e9, timings.cloud_ns / 1e9
            record.overhead_s = timings.overhead_ns / 1e9
            record.prompt_tokens = usage.prompt_tokens
            record.cloud_forward_passes = usage.cloud_forward_passes
            record.draft_tokens = usage.draft_tokens
            record.accepted_draft_tokens = usage.accepted_draft_tokens
        elif chunk.token_ids:
            clock.output(tier_name(chunk.tier), len(chunk.token_ids))

    return _timed(record, stub.GenerateStream(request, timeout=timeout_s), on_chunk)


def stream_cloud(stub: cloud_pb2_grpc.CloudStub, request: common_pb2.TierGenerateRequest,
                 record: RequestRecord, timeout_s: float) -> RequestRecord:
    """Cloud.GenerateStream, timed; every token is the cloud's."""

    def on_chunk(clock: _StreamClock, chunk: common_pb2.TierGenerateChunk) -> None:
        if chunk.token_ids:
            clock.output("cloud", len(chunk.token_ids))
        if chunk.finish_reason:
            record.prompt_tokens = chunk.prompt_tokens
            record.cloud_forward_passes = chunk.forward_passes

    record.resolved_policy = "cloud"
    return _timed(record, stub.GenerateStream(request, timeout=timeout_s), on_chunk)


class GrpcFailure(Exception):
    """An unexpected gRPC status; locust groups failures by this message (the code)."""


class Rejected(Exception):
    """A deliberate RESOURCE_EXHAUSTED: reported apart from failures."""


def sampling_for(workload: Workload, rng: random.Random,
                 max_tokens: int | None) -> common_pb2.SamplingParams:
    sampling = common_pb2.SamplingParams()
    if max_tokens or workload.max_tokens:
        sampling.max_tokens = max_tokens or workload.max_tokens  # type: ignore[assignment]
    if workload.temperature is not None:
        sampling.temperature = workload.temperature
        if workload.temperature > 0:  # reproducible sampling under the run's seed
            sampling.seed = rng.getrandbits(32)
    return sampling


class TandemUser(User):
    """A user with its own channel, seeded choices and arrival pacing. Subclasses build
    and send one request in `send()`."""

    abstract = True
    _next_index = 0

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.workload: Workload = environment.tandem_workload
        TandemUser._next_index += 1
        self.index = TandemUser._next_index
        self.rng = self.workload.user_rng(self.index)
        self.pacer = Pacer(self.workload.request_rate, self.workload.users, self.rng)
        self.channel: grpc.Channel | None = None

    def wait_time(self) -> float:
        return self.pacer.wait_seconds()

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(self.host)

    def on_stop(self) -> None:
        if self.channel is not None:
            self.channel.close()

    def send(self) -> RequestRecord:
        raise NotImplementedError

    @task
    def one_request(self) -> None:
        if not self.workload.budget.take():
            raise StopUser()
        self.report(self.send())
        if self.workload.budget.finish():  # the last request of the budget: stop the run,
            # after locust's CSV writer (which runs every CSV_STATS_INTERVAL_SEC) saw it
            gevent.spawn_later(CSV_STATS_INTERVAL_SEC + 0.5, self.environment.runner.quit)

    def report(self, record: RequestRecord) -> None:
        exception: Exception | None = None
        if record.code == REJECTED_CODE:
            exception = Rejected(record.code)
        elif record.code != "OK":
            exception = GrpcFailure(record.code)
        self.environment.events.request.fire(
            request_type="grpc", name=f"{record.target}/{record.policy or 'default'}",
            response_time=record.e2el_s * 1000, response_length=record.output_tokens,
            exception=exception, context={"tandem_record": record})


class RouterUser(TandemUser):
    """Single-turn requests to Router.GenerateStream, policy drawn per request."""

    def send(self) -> RequestRecord:
        prompt = self.workload.picker.pick(self.rng)  # type: ignore[union-attr]
        policy = weighted_choice(self.rng, self.workload.policies)
        request = router_pb2.GenerateRequest(
            prompt=prompt.text, policy=policy,
            sampling=sampling_for(self.workload, self.rng, prompt.max_tokens))
        record = RequestRecord("router", type(self).__name__, policy, list(prompt.tags))
        return stream_router(router_pb2_grpc.RouterStub(self.channel), request, record,
                             self.workload.timeout_s)


class RouterChatUser(TandemUser):
    """Multi-turn chats in router sessions: one turn per request, the session carrying
    the history; every chat of a set shares its system prompt (a shared prefix)."""

    def on_start(self) -> None:
        super().on_start()
        if not self.workload.prompts.chats:
            raise ValueError("chat users need a prompt set with 'chat' lines (--chats)")
        self.chat: Chat | None = None
        self.turn = 0
        self.chats_started = 0

    def send(self) -> RequestRecord:
        if self.chat is None or self.turn >= len(self.chat.turns):
            self.chat = self.rng.choice(self.workload.prompts.chats)
            self.turn = 0
            self.chats_started += 1
            self.session = f"lt{self.workload.seed}-u{self.index}-c{self.chats_started}-{time.time_ns()}"
        text = self.chat.turns[self.turn]
        policy = weighted_choice(self.rng, self.workload.chat_policies)
        request = router_pb2.GenerateRequest(
            policy=policy, session_id=self.session,
            sampling=sampling_for(self.workload, self.rng, None))
        if self.turn == 0 and self.chat.system:
            for role, content in (("system", self.chat.system), ("user", text)):
                request.messages.messages.add(role=role, content=content)
        else:
            request.prompt = text
        self.turn += 1
        record = RequestRecord("router", type(self).__name__, policy,
                               [*self.chat.tags, f"turn{self.turn}"], session=True)
        return stream_router(router_pb2_grpc.RouterStub(self.channel), request, record,
                             self.workload.timeout_s)


class CloudUser(TandemUser):
    """Single-turn requests straight to Cloud.GenerateStream (no router)."""

    def send(self) -> RequestRecord:
        prompt = self.workload.picker.pick(self.rng)  # type: ignore[union-attr]
        request = common_pb2.TierGenerateRequest(
            prompt=prompt.text, sampling=sampling_for(self.workload, self.rng, prompt.max_tokens))
        record = RequestRecord("cloud", type(self).__name__, "cloud", list(prompt.tags))
        return stream_cloud(cloud_pb2_grpc.CloudStub(self.channel), request, record,
                            self.workload.timeout_s)
