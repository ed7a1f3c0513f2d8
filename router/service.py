"""The Router gRPC servicer: validates requests, resolves sessions and the policy, runs
the policy and streams its answer with per-chunk provenance."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from tandem.router.config import RouterConfig
from tandem.router.metrics import RouterMetrics
from tandem.router.policies.base import Outcome, Policy, RoutedRequest
from tandem.router.state import StateStore, Turn
from tandem.router.tiers import Tiers
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import InvalidArgument, status_for
from tandem.shared.log import log_event
from tandem.shared.prompting import PromptInput, render
from tandem.shared.sampling import SamplingParams
from tandem.shared.tier_service import check_context
from tandem.v1 import router_pb2, router_pb2_grpc

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass
class PreparedRequest:
    routed: RoutedRequest
    policy: Policy
    session_id: str
    new_turns: list[Turn]  # stored with the answer once it completes


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, config: RouterConfig, tokenizer: object, tiers: Tiers, state: StateStore,
                 policies: dict[str, Policy], metrics: RouterMetrics) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.tiers = tiers
        self.state = state
        self.policies = policies
        self.metrics = metrics

    async def _prepare(self, request: router_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> PreparedRequest:
        """Validate everything and render the prompt; no state changes, no model work."""
        policy_name = request.policy or self.config.default_policy
        policy = self.policies.get(policy_name)
        if policy is None:
            raise InvalidArgument(
                f"policy: unknown policy {policy_name!r}; known: {sorted(self.policies)}")
        sampling = SamplingParams.from_pb(request.sampling,
                                          default_max_tokens=self.config.default_max_tokens,
                                          max_tokens_cap=self.config.max_tokens_cap)
        prompt = PromptInput.from_pb(request)
        for field, value in (("session_id", request.session_id), ("tenant", request.tenant)):
            if value and not NAME_PATTERN.match(value):
                raise InvalidArgument(f"{field}: must be 1-128 characters of [A-Za-z0-9._:-]")
        if request.session_id and prompt.raw:
            raise InvalidArgument("raw_prompt: cannot be combined with session_id")
        history = (await self.state.history(request.tenant, request.session_id)
                   if request.session_id else [])
        prompt_ids = render(self.tokenizer, prompt, history)  # type: ignore[arg-type]
        check_context(len(prompt_ids), sampling.max_tokens, self.config.context_window)
        routed = RoutedRequest(
            request_id=uuid.uuid4().hex, prompt_ids=prompt_ids, sampling=sampling,
            deadline=Deadline.from_context(context, self.config.default_timeout_seconds),
            tenant=request.tenant)
        return PreparedRequest(routed, policy, request.session_id, prompt.conversation())

    async def GenerateStream(self, request: router_pb2.GenerateRequest,
                             context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[router_pb2.GenerateChunk]:
        started = time.perf_counter_ns()
        policy_label = request.policy or self.config.default_policy
        try:
            prepared = await self._prepare(request, context)
            outcome = Outcome(prepared.policy.name)
            parts: list[str] = []
            first_token_ns = 0
            async for piece in prepared.policy.run(prepared.routed, self.tiers, outcome):
                first_token_ns = first_token_ns or time.perf_counter_ns() - started
                parts.append(piece.text)
                yield router_pb2.GenerateChunk(tier=piece.tier, text=piece.text,  # type: ignore[arg-type]
                                               token_ids=piece.token_ids)
            if prepared.session_id:
                answer = {"role": "assistant", "content": "".join(parts)}
                await self.state.append(request.tenant, prepared.session_id,
                                        prepared.new_turns + [answer],
                                        self.config.session_ttl_seconds)
        except Exception as exc:
            self.metrics.requests.labels(
                policy_label if policy_label in self.policies else "unknown",
                status_for(exc)[0].name).inc()
            raise
        total_ns = time.perf_counter_ns() - started
        timings = outcome.timings
        timings.first_token_ns = first_token_ns
        timings.total_ns = total_ns
        timings.overhead_ns = max(total_ns - timings.edge_ns - timings.cloud_ns, 0)
        outcome.usage.prompt_tokens = len(prepared.routed.prompt_ids)
        self.metrics.record(outcome, total_ns / 1e9, first_token_ns / 1e9 if first_token_ns else None)
        log_event(logger, "request done", request_id=prepared.routed.request_id,
                  policy=outcome.policy, escalated=outcome.decision.escalated,
                  edge_tokens=outcome.usage.edge_tokens, cloud_tokens=outcome.usage.cloud_tokens,
                  cloud_passes=outcome.usage.cloud_forward_passes, ms=round(total_ns / 1e6, 1))
        yield router_pb2.GenerateChunk(done=True, finish_reason=outcome.finish_reason,  # type: ignore[arg-type]
                                       usage=outcome.usage, timings=timings,
                                       decision=outcome.decision)

    async def Generate(self, request: router_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> router_pb2.GenerateResponse:
        response = router_pb2.GenerateResponse(session_id=request.session_id)
        async for chunk in self.GenerateStream(request, context):
            if chunk.done:
                response.finish_reason = chunk.finish_reason
                response.usage.CopyFrom(chunk.usage)
                response.timings.CopyFrom(chunk.timings)
                response.decision.CopyFrom(chunk.decision)
                continue
            segments = response.segments
            if segments and segments[-1].tier == chunk.tier:
                segments[-1].text += chunk.text
                segments[-1].token_ids.extend(chunk.token_ids)
            else:
                segments.add(tier=chunk.tier, text=chunk.text, token_ids=chunk.token_ids)
        response.text = "".join(s.text for s in response.segments)
        return response
