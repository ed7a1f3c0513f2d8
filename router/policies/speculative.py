"""`speculative`: the edge drafts k tokens, the cloud verifies them in one forward pass.

The output is the cloud's own output (greedy: token for token; sampling: the cloud's
distribution, by target sampling). Both tiers keep the session's KV between rounds and
reuse it by prefix, so neither re-processes the sequence; rejected drafts are rolled back.
Accepted draft tokens are labelled TIER_EDGE, the cloud's correction/bonus token TIER_CLOUD.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from tandem.router.policies.base import Chunk, Outcome, Policy, RoutedRequest, register_policy
from tandem.shared.models import eos_token_ids
from tandem.shared.text import IncrementalDetokenizer, StopStringMatcher
from tandem.v1 import cloud_pb2, common_pb2, edge_pb2

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tandem.router.config import RouterConfig
    from tandem.router.tiers import Tiers


@register_policy
class SpeculativePolicy(Policy):
    name = "speculative"

    def __init__(self, draft_tokens: int, tokenizer: PreTrainedTokenizerBase) -> None:
        self.draft_tokens = draft_tokens
        self.tokenizer = tokenizer
        self.eos = frozenset(eos_token_ids(tokenizer))
        self._cleanup: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, config: RouterConfig,
                    tokenizer: PreTrainedTokenizerBase) -> SpeculativePolicy:
        return cls(config.draft_tokens, tokenizer)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    async def run(self, request: RoutedRequest, tiers: Tiers,
                  outcome: Outcome) -> AsyncIterator[Chunk]:
        session = f"spec-{request.request_id}"
        tokens = list(request.prompt_ids)
        emitter = _Emitter(self._decode, request.sampling.stop, request.sampling.max_tokens,
                           self.eos, outcome)
        try:
            while not emitter.done:
                draft = await self._draft(tiers, request, session, tokens, emitter.remaining - 1,
                                          outcome)
                verdict = await tiers.verify(cloud_pb2.VerifyRequest(
                    session_id=session, tokens=tokens, draft_tokens=draft,
                    sampling=request.sampling.to_pb(), tenant=request.tenant),
                    request.deadline, outcome.timings)
                outcome.usage.cloud_forward_passes += 1
                outcome.usage.accepted_draft_tokens += verdict.accepted
                accepted = draft[:verdict.accepted]
                for tier, ids in ((common_pb2.TIER_EDGE, accepted),
                                  (common_pb2.TIER_CLOUD, [verdict.next_token])):
                    chunk = emitter.push(tier, ids)
                    if chunk:
                        yield chunk
                    if emitter.done:
                        break
                tokens += accepted + [verdict.next_token]
            tail = emitter.flush()
            if tail:
                yield tail
        finally:
            task = asyncio.get_running_loop().create_task(tiers.end_session(request.tenant, session))
            self._cleanup.add(task)
            task.add_done_callback(self._cleanup.discard)

    async def _draft(self, tiers: Tiers, request: RoutedRequest, session: str,
                     tokens: list[int], room: int, outcome: Outcome) -> list[int]:
        """The edge's draft (at most ``room`` tokens: the cloud adds one per round)."""
        k = min(self.draft_tokens, room)
        if k <= 0:
            return []
        reply = await tiers.draft(edge_pb2.DraftRequest(
            session_id=session, tokens=tokens, num_tokens=k, sampling=request.sampling.to_pb(),
            tenant=request.tenant), request.deadline, outcome.timings)
        outcome.usage.draft_tokens += len(reply.tokens)
        outcome.usage.edge_generated_tokens += len(reply.tokens)
        return list(reply.tokens)


class _Emitter:
    """Turns verified tokens into answer chunks: EOS, stop strings and max_tokens end it."""

    def __init__(self, decode: object, stop: Sequence[str], max_tokens: int,
                 eos: frozenset[int], outcome: Outcome) -> None:
        self._detok = IncrementalDetokenizer(decode)  # type: ignore[arg-type]
        self._stops = StopStringMatcher(stop)
        self._outcome = outcome
        self._eos = eos
        self.remaining = max_tokens
        self.done = False

    def push(self, tier: int, ids: Sequence[int]) -> Chunk | None:
        kept: list[int] = []
        text = ""
        for token in ids:
            if token in self._eos:
                self._finish(common_pb2.FINISH_REASON_STOP)
                break
            kept.append(token)
            self.remaining -= 1
            text += self._stops.feed(self._detok.push([token]))
            if self._stops.stopped:
                self._finish(common_pb2.FINISH_REASON_STOP)
                break
            if self.remaining == 0:
                self._finish(common_pb2.FINISH_REASON_LENGTH)
                break
        if tier == common_pb2.TIER_EDGE:
            self._outcome.usage.edge_tokens += len(kept)
        else:
            self._outcome.usage.cloud_tokens += len(kept)
        return Chunk(tier, text, tuple(kept)) if kept or text else None

    def _finish(self, reason: int) -> None:
        self.done = True
        self._outcome.finish_reason = reason

    def flush(self) -> Chunk | None:
        text = self._stops.flush()
        return Chunk(common_pb2.TIER_CLOUD, text) if text else None
