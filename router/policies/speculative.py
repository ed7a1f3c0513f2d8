"""`speculative`: the edge drafts k tokens, the cloud verifies them in one forward pass.

The output is the cloud's own output (greedy: token for token; sampling: the cloud's
distribution, by rejection sampling with the draft's distributions). Both tiers keep the
session's KV between rounds and reuse it by prefix, so neither re-processes the sequence;
rejected drafts are rolled back. Accepted draft tokens are labelled TIER_EDGE, the cloud's
correction/bonus token TIER_CLOUD.

The draft length adapts to the measured acceptance rate and round-trip time
(draft_length.py); when speculation is predicted to be slower than the cloud alone, the
rest of the answer is streamed by the cloud directly.

Pipelined drafting (greedy requests, links whose round trip is worth at least two draft
tokens): while a draft is being verified, the edge keeps drafting past it as if it were
accepted whole. When it was, and the cloud's next token is the edge's first pipelined
one, the rest is the next round's draft, made during the round trip instead of after it;
otherwise the pipelined draft is cancelled (the edge stops at its current token) and
nothing changes: every token is still verified by the cloud.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING

from tandem.router.latency import DECISION, spent
from tandem.router.policies.base import (Outcome, Policy, PolicyResources, RoutedRequest,
                                         register_policy)
from tandem.router.policies.draft_length import DraftLengthController, RequestRounds
from tandem.router.policies.emitter import Emitter
from tandem.router.policies.spill import (EDGE_REFUSED, EDGE_SLOW_DRAFT, edge_too_busy, spill,
                                          unspill)
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import ResourceExhausted, TandemError
from tandem.shared.models import eos_token_ids
from tandem.shared.segments import Segment
from tandem.v1 import cloud_pb2, common_pb2, edge_pb2

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tandem.router.config import RouterConfig
    from tandem.router.tiers import Tiers


@register_policy
class SpeculativePolicy(Policy):
    name = "speculative"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, draft_length: DraftLengthController,
                 edge_wait_budget_s: float = float("inf")) -> None:
        self.tokenizer = tokenizer
        self.eos = frozenset(eos_token_ids(tokenizer))
        self.draft_length = draft_length
        self.edge_wait_budget_s = edge_wait_budget_s

    @classmethod
    def from_config(cls, config: RouterConfig, resources: PolicyResources) -> SpeculativePolicy:
        return cls(resources.tokenizer,
                   DraftLengthController(config.draft_tokens, adaptive=config.adaptive_draft,
                                        pipelined=config.pipelined_draft),
                   config.edge_wait_budget_ms / 1e3)

    def run(self, request: RoutedRequest, tiers: Tiers, outcome: Outcome) -> AsyncIterator[Segment]:
        return self.decode(request, tiers, outcome)

    async def decode(self, request: RoutedRequest, tiers: Tiers, outcome: Outcome,
                     first_draft: list[int] | None = None,
                     leniency: float = 0.0) -> AsyncIterator[Segment]:
        """Speculative rounds until the answer ends; ``first_draft`` (e.g. an escalated edge
        answer) is verified first instead of asking the edge for a draft. ``leniency`` is
        the cloud's acceptance rule: 0 is lossless (speculative-cascade relaxes it)."""
        session = f"spec-{request.request_id}"
        tokens = list(request.prompt_ids)
        emitter = Emitter(self.tokenizer, request.sampling.stop, request.sampling.max_tokens,
                          self.eos, outcome)
        ahead: asyncio.Task[edge_pb2.DraftResponse] | None = None
        drafted_ahead: list[int] = []  # the edge's pipelined tokens that continue `tokens`
        rounds = RequestRounds()
        # The cloud refused to finish the answer alone after verifying some of it: the
        # rounds go on on the edge's drafts, however slow, rather than cut the answer.
        cloud_refused_alone: ResourceExhausted | None = None
        try:
            while not emitter.done:
                if (first_draft is None and cloud_refused_alone is None
                        and edge_too_busy(tiers, self.edge_wait_budget_s)):
                    spill(outcome, EDGE_SLOW_DRAFT)  # the edge cannot draft in time
                with spent(outcome.timings, DECISION):
                    abandon = first_draft is None and cloud_refused_alone is None and (
                        outcome.decision.spilled or self.draft_length.should_abandon(rounds))
                if abandon:
                    outcome.decision.speculation_abandoned = not outcome.decision.spilled
                    streamed = False
                    try:
                        async for chunk in self._finish_on_cloud(request, tiers, outcome,
                                                                 tokens, emitter):
                            streamed = True
                            yield chunk
                    except ResourceExhausted as refused:
                        if streamed or len(tokens) == len(request.prompt_ids):
                            raise  # nothing verified yet: refused before any cloud work
                        cloud_refused_alone = refused
                        unspill(outcome)
                        continue
                    break
                if first_draft is not None:
                    draft, distributions = first_draft[:emitter.remaining - 1], []
                    outcome.usage.draft_tokens += len(draft)  # the edge already made them
                    first_draft = None
                else:
                    try:
                        draft, distributions = await self._draft(
                            tiers, request, session, tokens, emitter.remaining - 1, outcome,
                            drafted_ahead, rounds)
                    except ResourceExhausted as refused:  # the edge's queue is full
                        if cloud_refused_alone is not None:
                            # Both tiers refuse an answer already begun: the first to have
                            # room (its retry-after, within the deadline) goes on with it.
                            await _wait_for_room(request.deadline, cloud_refused_alone, refused)
                            cloud_refused_alone = None
                        else:
                            spill(outcome, EDGE_REFUSED)  # the cloud goes on alone
                        continue
                ahead = self._draft_ahead(tiers, request, session, tokens, draft,
                                          emitter.remaining - len(draft) - 1)
                accepted, next_token = await self._verify(tiers, request, session, tokens,
                                                          draft, distributions, outcome,
                                                          rounds, leniency)
                drafted_ahead = await self._continuation(ahead, draft, accepted, next_token,
                                                         outcome)
                ahead = None
                for tier, ids in ((common_pb2.TIER_EDGE, accepted),
                                  (common_pb2.TIER_CLOUD, [next_token])):
                    chunk = emitter.push(tier, ids)
                    if chunk:
                        yield chunk
                    if emitter.done:
                        break
                tokens += accepted + [next_token]
            tail = emitter.flush()
            if tail:
                yield tail
        finally:  # free the session's KV on both tiers, after the reply
            if ahead is not None:  # the request ended (or failed) while it ran
                _cancel(ahead)
            outcome.after_reply.append(partial(tiers.end_session, request.tenant, session))

    async def _draft(self, tiers: Tiers, request: RoutedRequest, session: str,
                     tokens: list[int], room: int, outcome: Outcome, drafted_ahead: list[int],
                     rounds: RequestRounds
                     ) -> tuple[list[int], list[common_pb2.TokenDistribution]]:
        """The edge's draft (at most ``room`` tokens: the cloud adds one per round), after
        the ``drafted_ahead`` tokens the edge already made during the last round trip."""
        with spent(outcome.timings, DECISION):
            k = min(self.draft_length.choose(), room)
        outcome.decision.draft_length = max(k, 0)
        ready = drafted_ahead[:max(k, 0)]
        outcome.usage.draft_tokens += len(ready)
        if len(ready) >= k or (ready and ready[-1] in self.eos):
            return ready, []
        started = time.perf_counter()
        reply = await tiers.draft(edge_pb2.DraftRequest(
            session_id=session, tokens=tokens + ready, num_tokens=k - len(ready),
            sampling=request.sampling.to_pb(), tenant=request.tenant,
            return_distributions=not request.sampling.greedy), request.deadline, outcome.timings)
        with spent(outcome.timings, DECISION):
            self.draft_length.observe_draft(time.perf_counter() - started, len(reply.tokens),
                                            reply.computed_tokens, rounds)
        outcome.usage.draft_tokens += len(reply.tokens)
        outcome.usage.edge_generated_tokens += len(reply.tokens)
        return ready + list(reply.tokens), list(reply.distributions)

    def _draft_ahead(self, tiers: Tiers, request: RoutedRequest, session: str,
                     tokens: list[int], draft: list[int], room: int
                     ) -> asyncio.Task[edge_pb2.DraftResponse] | None:
        """Start drafting past ``draft`` while it is verified (pipelined drafting), or None
        where that cannot pay: sampling, a draft that ended the answer, no room, a round
        trip shorter than two draft tokens."""
        count = min(self.draft_length.ahead_tokens(), room)
        if count < 2 or not draft or not request.sampling.greedy or draft[-1] in self.eos:
            return None
        started = time.perf_counter()

        async def run() -> edge_pb2.DraftResponse:
            reply = await tiers.draft(edge_pb2.DraftRequest(
                session_id=session, tokens=tokens + draft, num_tokens=count,
                sampling=request.sampling.to_pb(), tenant=request.tenant),
                request.deadline, common_pb2.Timings())  # overlapped: not a wait
            self.draft_length.observe_draft(time.perf_counter() - started, len(reply.tokens),
                                            reply.computed_tokens)
            return reply

        return asyncio.ensure_future(run())

    async def _continuation(self, ahead: asyncio.Task[edge_pb2.DraftResponse] | None,
                            draft: list[int], accepted: list[int], next_token: int,
                            outcome: Outcome) -> list[int]:
        """The pipelined tokens that continue the verified sequence: those after the
        first when the whole draft was accepted and the cloud's next token is the edge's
        first pipelined one; otherwise none (and the pipelined draft is cancelled)."""
        if ahead is None:
            return []
        if len(accepted) < len(draft):
            _cancel(ahead)
            return []
        try:
            reply = await ahead
        except TandemError:  # only an optimisation: the round goes on without it
            return []
        outcome.usage.edge_generated_tokens += len(reply.tokens)
        if not reply.tokens or reply.tokens[0] != next_token:
            return []
        outcome.decision.pipelined_rounds += 1
        return list(reply.tokens[1:])

    async def _verify(self, tiers: Tiers, request: RoutedRequest, session: str,
                      tokens: list[int], draft: list[int],
                      distributions: list[common_pb2.TokenDistribution],
                      outcome: Outcome, rounds: RequestRounds,
                      leniency: float) -> tuple[list[int], int]:
        """One cloud pass over ``draft``; returns (accepted drafts, the cloud's next token)."""
        started = time.perf_counter()
        verdict = await tiers.verify(cloud_pb2.VerifyRequest(
            session_id=session, tokens=tokens, draft_tokens=draft,
            sampling=request.sampling.to_pb(), tenant=request.tenant,
            draft_distributions=distributions, leniency=leniency),
            request.deadline, outcome.timings)
        with spent(outcome.timings, DECISION):
            self.draft_length.observe_verify(rounds, time.perf_counter() - started,
                                             verdict.timings.total_ns / 1e9, len(draft),
                                             verdict.accepted, verdict.computed_tokens)
        outcome.usage.cloud_forward_passes += 1
        outcome.usage.accepted_draft_tokens += verdict.accepted
        return draft[:verdict.accepted], verdict.next_token

    async def _finish_on_cloud(self, request: RoutedRequest, tiers: Tiers, outcome: Outcome,
                               tokens: list[int], emitter: Emitter) -> AsyncIterator[Segment]:
        """Stream the rest from the cloud alone (same prefix, so the same output)."""
        continuation = request.tier_request(prompt_ids=tokens, max_tokens=emitter.remaining)
        async for chunk in tiers.cloud_stream(continuation, request.deadline, outcome.timings):
            # One pass per streamed token (the first is the continuation's prefill); the
            # stream may be cut at max_tokens before its final chunk reports a count.
            outcome.usage.cloud_forward_passes += len(chunk.token_ids)
            piece = emitter.push(common_pb2.TIER_CLOUD, chunk.token_ids)
            if piece:
                yield piece
            if chunk.finish_reason and not emitter.done:  # the cloud ended it (EOS / stop)
                emitter.finish(chunk.finish_reason)
            if emitter.done:
                return


async def _wait_for_room(deadline: Deadline, *refusals: ResourceExhausted) -> None:
    """Sleep until the soonest retry-after of ``refusals``; the last refusal is raised
    when none gave one or the wait would end past the deadline."""
    hints = [r.retry_after_s for r in refusals if r.retry_after_s]
    remaining = deadline.remaining()
    if not hints or (remaining is not None and min(hints) >= remaining):
        raise refusals[-1]
    await asyncio.sleep(min(hints))


def _cancel(ahead: asyncio.Task[edge_pb2.DraftResponse]) -> None:
    """Cancel a pipelined draft nobody needs; its outcome is read, so asyncio is quiet."""
    ahead.cancel()
    ahead.add_done_callback(lambda task: task.cancelled() or task.exception())
