"""Turning verified token ids into answer chunks for policies that decode token by token
in the router, under the shared end-of-generation rule (tandem.shared.text.AnswerText)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from tandem.router.policies.base import Outcome
from tandem.shared.segments import Segment
from tandem.shared.text import AnswerText
from tandem.v1 import common_pb2

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class Emitter:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str], max_tokens: int,
                 eos: Collection[int], outcome: Outcome) -> None:
        self._answer = AnswerText(lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                                  stop, max_tokens, eos)
        self._outcome = outcome

    @property
    def done(self) -> bool:
        return self._answer.done

    @property
    def remaining(self) -> int:
        return self._answer.remaining

    def push(self, tier: int, ids: Sequence[int]) -> Segment | None:
        """Append ``ids`` produced by ``tier``; the chunk to send (None if nothing shows)."""
        kept: list[int] = []
        text = ""
        for token in ids:
            piece = self._answer.push(token)
            if piece is None:
                break
            kept.append(token)
            text += piece
        if self._answer.done:
            self._outcome.finish_reason = self._answer.finish_reason
        if tier == common_pb2.TIER_EDGE:
            self._outcome.usage.edge_tokens += len(kept)
        else:
            self._outcome.usage.cloud_tokens += len(kept)
        return Segment(tier, text, tuple(kept)) if kept or text else None

    def finish(self, reason: int) -> None:
        self._answer.finish(reason)
        self._outcome.finish_reason = reason

    def flush(self) -> Segment | None:
        """Text held back for a possible stop string, once the answer has ended."""
        text = self._answer.flush()
        return Segment(common_pb2.TIER_CLOUD, text) if text else None
