"""The router's request path, independent of the transport: validate and render a
request, admit it (rate limits, budgets), answer from the response cache or run the
policy, and stream the answer with per-chunk provenance. State writes happen before the
final chunk is produced.

The gRPC servicer (router/service.py) and the in-process edge SDK (edge/client.py) both
drive this one core, so a request behaves the same whether it is routed by a router
service or on the device.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import Any

from tandem.router.admission import Admission, Reservation
from tandem.router.config import RouterConfig
from tandem.router.latency import DECISION, STATE, spent
from tandem.router.metrics import RouterMetrics
from tandem.router.policies.base import Outcome, Policy, RoutedRequest
from tandem.router.response_cache import cache_key, replay, snapshot
from tandem.router.state import Completion, StateStore, Turn
from tandem.router.tiers import Tiers
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import InvalidArgument, ResourceExhausted, status_for
from tandem.shared.log import log_event
from tandem.shared.prompting import PromptInput, max_token_bytes, render_off_loop
from tandem.shared.sampling import SamplingParams
from tandem.shared.segments import Segment, merge_by_tier
from tandem.shared.tier_handler import check_context
from tandem.v1 import common_pb2, router_pb2

logger = logging.getLogger(__name__)

# Tenant and session names; checked with fullmatch (match with "$" let "a\n" through).
NAME_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass
class PreparedRequest:
    routed: RoutedRequest
    policy: Policy
    session_id: str
    new_turns: list[Turn]  # stored with the answer once it completes


class RouterCore:
    """Runs GenerateRequests against a set of policies and tiers."""

    def __init__(self, config: RouterConfig, tokenizer: object, tiers: Tiers, state: StateStore,
                 policies: dict[str, Policy], metrics: RouterMetrics) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.tiers = tiers
        self.state = state
        self.policies = policies
        self.metrics = metrics
        self.admission = Admission(config, state)
        self.bytes_per_token = max_token_bytes(tokenizer)  # type: ignore[arg-type]
        self._after_reply: set[asyncio.Task[Any]] = set()

    async def admit(self, request: router_pb2.GenerateRequest, deadline: Deadline,
                    timings: common_pb2.Timings
                    ) -> tuple[PreparedRequest, Reservation, str | None, bytes | None]:
        """Validate, render and admit the request; returns it with its reservation and
        response-cache key and entry. One state round trip goes beside admission: a
        session's history, or (the prompt rendered first) the response-cache lookup of a
        request without one. A request refused for a client mistake is refused as such
        even when it is also over a limit, and a refusal withdraws its admission, so it
        changes no state. Validation and rendering count as decision time, state calls as
        state time."""
        with spent(timings, DECISION):
            policy, sampling, prompt = self._validate(request)
            rendered = key = None
            if not request.session_id:
                rendered = await self._render(request, policy, sampling, prompt, [], deadline)
                if self.config.response_cache_seconds > 0:
                    key = cache_key(rendered.routed, policy.name, False)
        with spent(timings, STATE):
            beside = (self.state.history(request.tenant, request.session_id)
                      if request.session_id else self._cache_lookup(request.tenant, key))
            admitted, context = await asyncio.gather(
                self.admission.admit(request.tenant, sampling.max_tokens), beside,
                return_exceptions=True)
        try:
            if isinstance(context, BaseException):
                raise context
            if rendered is None:
                with spent(timings, DECISION):
                    rendered = await self._render(request, policy, sampling, prompt, context,
                                                  deadline)
                context = None  # no response cache for sessions
        except BaseException:
            if not isinstance(admitted, BaseException):
                with spent(timings, STATE):
                    await self.admission.withdraw(admitted)
            raise
        if isinstance(admitted, BaseException):
            raise admitted
        return rendered, admitted, key, context

    async def _cache_lookup(self, tenant: str, key: str | None) -> bytes | None:
        return await self.state.cache_get(tenant, key) if key else None

    async def _render(self, request: router_pb2.GenerateRequest, policy: Policy,
                      sampling: SamplingParams, prompt: PromptInput, history: list[Turn],
                      deadline: Deadline) -> PreparedRequest:
        """Prompt token ids (history first), checked against the context window."""
        prompt_ids = await render_off_loop(self.tokenizer, prompt, history)  # type: ignore[arg-type]
        check_context(len(prompt_ids), sampling.max_tokens, self.config.context_window)
        turns = prompt.conversation()
        routed = RoutedRequest(
            request_id=uuid.uuid4().hex, prompt_ids=prompt_ids, sampling=sampling,
            deadline=deadline, tenant=request.tenant,
            prompt_text=turns[-1]["content"] if turns else "")
        return PreparedRequest(routed, policy, request.session_id, turns)

    def _validate(self, request: router_pb2.GenerateRequest
                  ) -> tuple[Policy, SamplingParams, PromptInput]:
        policy_name = request.policy or self.config.default_policy
        policy = self.policies.get(policy_name)
        if policy is None:
            raise InvalidArgument(
                f"policy: unknown policy {policy_name!r}; known: {sorted(self.policies)}")
        sampling = SamplingParams.from_pb(request.sampling,
                                          default_max_tokens=self.config.default_max_tokens,
                                          max_tokens_cap=self.config.max_tokens_cap)
        prompt = PromptInput.from_pb(request)
        prompt.check_size(self.config.context_window, self.bytes_per_token)
        for field, value in (("session_id", request.session_id), ("tenant", request.tenant)):
            if value and not NAME_PATTERN.fullmatch(value):
                raise InvalidArgument(f"{field}: must be 1-128 characters of [A-Za-z0-9._:-]")
        if request.session_id and prompt.raw:
            raise InvalidArgument("raw_prompt: cannot be combined with session_id")
        return policy, sampling, prompt

    async def stream(self, request: router_pb2.GenerateRequest,
                     deadline: Deadline) -> AsyncIterator[router_pb2.GenerateChunk]:
        """The answer as chunks; the last one has ``done`` set and carries the accounting."""
        started = time.perf_counter_ns()
        policy_label = request.policy or self.config.default_policy
        timings = common_pb2.Timings()  # the router's own parts accumulate here (latency.py)
        outcome: Outcome | None = None
        reservation: Reservation | None = None
        chunks: list[router_pb2.GenerateChunk] = []
        try:
            prepared, reservation, key, cached = await self.admit(request, deadline, timings)
            degraded = self.state.degraded  # its history (or cache lookup) was local
            if cached is not None:
                replayed = await self._replay(cached, reservation, timings, started)
                reservation = None  # settled by the replay
                for chunk in replayed:
                    yield chunk
                return
            outcome = Outcome(prepared.policy.name, timings=timings)
            # aclosing: a cancelled reply closes the policy at once (its tier calls stop and
            # its cleanups are registered before ours run), not whenever it is collected.
            async with aclosing(prepared.policy.run(prepared.routed, self.tiers, outcome)) as run:
                async for piece in run:
                    chunk = router_pb2.GenerateChunk(tier=piece.tier, text=piece.text,  # type: ignore[arg-type]
                                                     token_ids=piece.token_ids)
                    timings.first_token_ns = (timings.first_token_ns
                                              or time.perf_counter_ns() - started)
                    chunks.append(chunk)
                    yield chunk
            final = self._final_chunk(prepared, outcome)
            with spent(timings, STATE):
                await self._write_state(request, prepared, reservation, outcome, chunks, final,
                                        key)
            # Fail-open is labelled, never silent (and counted: state_fallbacks_total).
            final.decision.state_degraded = degraded or self.state.degraded
            _close_timings(timings, started)
            final.timings.CopyFrom(timings)
            self._observe(prepared, outcome, timings)
            reservation = None  # settled by the completion write
        except Exception as exc:
            label = policy_label if policy_label in self.policies else "unknown"
            self.metrics.requests.labels(label, status_for(exc)[0].name).inc()
            if reservation is not None:  # a tier refused or failed it: give the admission back
                await self._give_back(reservation, chunks)
                reservation = None
            if isinstance(exc, ResourceExhausted):
                self.metrics.refusals.labels(label).observe(
                    (time.perf_counter_ns() - started) / 1e9)
            raise
        finally:
            if reservation is not None:  # cancelled by its client: give back in the background
                self._start_after_reply_calls([partial(self._give_back, reservation, chunks)])
            if outcome is not None and outcome.after_reply:
                self._start_after_reply(outcome)
        yield final

    def _start_after_reply(self, outcome: Outcome) -> None:
        """Start the policy's cleanups once the reply is complete (or abandoned)."""
        self._start_after_reply_calls(outcome.after_reply)
        outcome.after_reply.clear()

    def _start_after_reply_calls(self, calls: list[Callable[[], Awaitable[Any]]]) -> None:
        loop = asyncio.get_running_loop()
        for call in calls:
            task = loop.create_task(call())
            self._after_reply.add(task)
            task.add_done_callback(self._after_reply.discard)

    async def _give_back(self, reservation: Reservation,
                         chunks: list[router_pb2.GenerateChunk]) -> None:
        """A request that ended without an answer: nothing streamed gives its admission
        back whole (the refusal or failure changes no state); a partial answer keeps the
        tokens it produced and gives back the rest."""
        if chunks:
            await self.admission.settle(reservation, sum(len(c.token_ids) for c in chunks))
        else:
            await self.admission.withdraw(reservation)

    async def _replay(self, cached: bytes, reservation: Reservation, timings: common_pb2.Timings,
                      started: int) -> list[router_pb2.GenerateChunk]:
        """A cached answer's chunks (no model work); the reservation is settled first."""
        chunks = replay(cached)
        with spent(timings, STATE):
            await self.admission.settle(reservation, 0)
        _close_timings(timings, started)
        chunks[-1].timings.CopyFrom(timings)
        self.metrics.cache_hits.inc()
        self.metrics.record_router_latency(timings)
        return chunks

    def _final_chunk(self, prepared: PreparedRequest,
                     outcome: Outcome) -> router_pb2.GenerateChunk:
        """The final chunk without timings (set once the state writes are done)."""
        outcome.usage.prompt_tokens = len(prepared.routed.prompt_ids)
        return router_pb2.GenerateChunk(done=True, finish_reason=outcome.finish_reason,  # type: ignore[arg-type]
                                        usage=outcome.usage, decision=outcome.decision)

    async def _write_state(self, request: router_pb2.GenerateRequest, prepared: PreparedRequest,
                           reservation: Reservation, outcome: Outcome,
                           chunks: list[router_pb2.GenerateChunk],
                           final: router_pb2.GenerateChunk, key: str | None) -> None:
        """Session turn, budget refund, cache entry and statistics, all done before the
        final chunk acknowledges the answer (one state-store call: one Redis round trip),
        together with the writes the policy started (they overlap it)."""
        usage = outcome.usage
        c = self.config
        answer = {"role": "assistant", "content": "".join(ch.text for ch in chunks)}
        complete = self.state.complete(Completion(
            tenant=request.tenant, policy=outcome.policy, stats={
                "requests": 1, "escalations": int(outcome.decision.escalated),
                "edge_tokens": usage.edge_tokens, "cloud_tokens": usage.cloud_tokens,
                "cloud_passes": usage.cloud_forward_passes,
                "draft_tokens": usage.draft_tokens,
                "accepted_tokens": usage.accepted_draft_tokens},
            session_id=prepared.session_id, turns=prepared.new_turns + [answer],
            session_ttl_s=c.session_ttl_seconds,
            refund_tokens=self.admission.unused(reservation,
                                                usage.edge_tokens + usage.cloud_tokens),
            budget_window_s=c.token_budget_window_seconds, cache_key=key,
            cache_value=snapshot(chunks, final) if key else b"",
            cache_ttl_s=c.response_cache_seconds, write_id=prepared.routed.request_id))
        await asyncio.gather(complete, *outcome.state_writes)  # all stored before the ack

    def _observe(self, prepared: PreparedRequest, outcome: Outcome,
                 timings: common_pb2.Timings) -> None:
        """Metrics and a log line for a completed request."""
        usage = outcome.usage
        self.metrics.record(outcome, timings.total_ns / 1e9,
                            timings.first_token_ns / 1e9 if timings.first_token_ns else None)
        self.metrics.record_router_latency(timings)
        log_event(logger, "request done", request_id=prepared.routed.request_id,
                  policy=outcome.policy, escalated=outcome.decision.escalated,
                  edge_tokens=usage.edge_tokens, cloud_tokens=usage.cloud_tokens,
                  cloud_passes=usage.cloud_forward_passes,
                  ms=round(timings.total_ns / 1e6, 1),
                  overhead_ms=round(timings.overhead_ns / 1e6, 2),
                  state_ms=round(timings.state_ns / 1e6, 3),
                  decision_ms=round(timings.decision_ns / 1e6, 3),
                  scoring_ms=round(timings.scoring_ns / 1e6, 3))


def _close_timings(timings: common_pb2.Timings, started: int) -> None:
    timings.total_ns = time.perf_counter_ns() - started
    timings.overhead_ns = max(timings.total_ns - timings.edge_ns - timings.cloud_ns, 0)


def response_from_chunks(chunks: Iterable[router_pb2.GenerateChunk],
                         session_id: str = "") -> router_pb2.GenerateResponse:
    """A complete response from a streamed answer (its segments merged by tier)."""
    response = router_pb2.GenerateResponse(session_id=session_id)
    pieces = []
    for chunk in chunks:
        if chunk.done:
            response.finish_reason = chunk.finish_reason
            response.usage.CopyFrom(chunk.usage)
            response.timings.CopyFrom(chunk.timings)
            response.decision.CopyFrom(chunk.decision)
        else:
            pieces.append(Segment(chunk.tier, chunk.text, tuple(chunk.token_ids)))
    for segment in merge_by_tier(pieces):
        response.segments.add(tier=segment.tier, text=segment.text,  # type: ignore[arg-type]
                              token_ids=segment.token_ids)
        response.text += segment.text
    return response
