"""The speculative loop when the edge turns busy mid-answer and the cloud is full: scripted
tiers (the cloud's "answer" is a fixed token sequence) drive SpeculativePolicy.decode.

Under overload (`tandem chaos --scenarios overload`) an auto request whose first draft the
cloud had verified spilled to the cloud alone when the edge's queue grew, the cloud refused
that new generation, and the client got RESOURCE_EXHAUSTED after 6-8 s and part of an
answer. The rounds now go on on the edge's drafts instead (and when the edge refuses too,
on whichever has room first, within the deadline); with nothing verified yet, the refusal
is still immediate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tandem.router.policies.base import Outcome, RoutedRequest
from tandem.router.policies.draft_length import DraftLengthController
from tandem.router.policies.speculative import SpeculativePolicy
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import ResourceExhausted
from tandem.shared.sampling import SamplingParams
from tandem.v1 import cloud_pb2, common_pb2, edge_pb2

PROMPT = [1, 2, 3]


class ScriptedTiers:
    """An edge that drafts the answer exactly; a cloud that verifies but refuses every
    generation of its own; the edge's load reads busy once ``busy_after`` drafts ran."""

    def __init__(self, answer: list[int], busy_after: int, refused_drafts: int = 0) -> None:
        self.answer = answer
        self.busy_after = busy_after
        self.refused_drafts = refused_drafts  # Draft calls refused once the edge is busy
        self.drafts = 0
        self.cloud_generations = 0

    def _next(self, tokens: list[int], n: int) -> list[int]:
        done = len(tokens) - len(PROMPT)
        return self.answer[done:done + n]

    async def draft(self, request: edge_pb2.DraftRequest, deadline: Deadline,
                    timings: common_pb2.Timings) -> edge_pb2.DraftResponse:
        if self.drafts >= self.busy_after and self.refused_drafts > 0:
            self.refused_drafts -= 1
            raise ResourceExhausted("edge: edge is busy", 0.05)
        self.drafts += 1
        tokens = self._next(list(request.tokens), request.num_tokens)
        return edge_pb2.DraftResponse(tokens=tokens, computed_tokens=len(tokens))

    async def verify(self, request: cloud_pb2.VerifyRequest, deadline: Deadline,
                     timings: common_pb2.Timings) -> cloud_pb2.VerifyResponse:
        draft = list(request.draft_tokens)
        truth = self._next(list(request.tokens), len(draft) + 1)
        return cloud_pb2.VerifyResponse(accepted=len(draft), next_token=truth[len(draft)])

    async def cloud_stream(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                           timings: common_pb2.Timings
                           ) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        self.cloud_generations += 1
        raise ResourceExhausted("cloud: cloud is busy", 0.5)
        yield  # an async generator, like the real call

    def edge_load(self) -> common_pb2.TierLoad:
        queued = 9 if self.drafts >= self.busy_after else 0
        return common_pb2.TierLoad(queued=queued, max_queued=4, capacity=1)

    def cloud_load(self) -> common_pb2.TierLoad:
        return common_pb2.TierLoad(capacity=8, max_queued=64)

    async def end_session(self, tenant: str, session_id: str) -> None:
        pass


def decode(tokenizer, tiers: ScriptedTiers, max_tokens: int,  # type: ignore[no-untyped-def]
           deadline_s: float = 30.0) -> tuple[list[int], Outcome]:
    policy = SpeculativePolicy(tokenizer, DraftLengthController(4, adaptive=False),
                               edge_wait_budget_s=1.0)
    request = RoutedRequest("r1", list(PROMPT), SamplingParams(max_tokens=max_tokens),
                            Deadline(deadline_s))
    outcome = Outcome("speculative")

    async def run() -> list[int]:
        return [t for segment in [s async for s in policy.decode(request, tiers, outcome)]
                for t in segment.token_ids]

    return asyncio.run(run()), outcome


def test_an_answer_begun_goes_on_with_drafts_when_the_cloud_refuses_to_finish_it(
        smollm2_tokenizer) -> None:
    answer = smollm2_tokenizer.encode(" one two three four five six seven eight nine ten")
    tiers = ScriptedTiers(answer, busy_after=1)
    tokens, outcome = decode(smollm2_tokenizer, tiers, len(answer))
    assert tokens == answer  # whole, verified round by round
    assert tiers.cloud_generations == 1  # it tried the cloud alone once, then drafted on
    assert tiers.drafts > 1
    assert not outcome.decision.spilled and not outcome.decision.speculation_abandoned


def test_with_nothing_verified_a_refusal_of_both_tiers_is_immediate(smollm2_tokenizer) -> None:
    tiers = ScriptedTiers(smollm2_tokenizer.encode(" one two three"), busy_after=0)
    with pytest.raises(ResourceExhausted):
        decode(smollm2_tokenizer, tiers, 8)
    assert tiers.drafts == 0 and tiers.cloud_generations == 1


def test_when_both_tiers_refuse_a_begun_answer_it_waits_for_room_within_its_deadline(
        smollm2_tokenizer) -> None:
    answer = smollm2_tokenizer.encode(" one two three four five six seven eight nine ten")
    tiers = ScriptedTiers(answer, busy_after=1, refused_drafts=2)  # then the edge has room
    tokens, _ = decode(smollm2_tokenizer, tiers, len(answer))
    assert tokens == answer
    assert tiers.cloud_generations == 3  # tried again after each wait

    stuck = ScriptedTiers(answer, busy_after=1, refused_drafts=10**6)
    with pytest.raises(ResourceExhausted):  # the waits would end past the deadline
        decode(smollm2_tokenizer, stuck, len(answer), deadline_s=0.5)
