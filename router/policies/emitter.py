"""Turning verified token ids into answer chunks for policies that decode token by token
in the router: detokenization, EOS, stop strings and max_tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tandem.router.policies.base import Chunk, Outcome
from tandem.shared.text import IncrementalDetokenizer, StopStringMatcher
from tandem.v1 import common_pb2

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class Emitter:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str], max_tokens: int,
                 eos: frozenset[int], outcome: Outcome) -> None:
        self._detok = IncrementalDetokenizer(
            lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        self._stops = StopStringMatcher(stop)
        self._outcome = outcome
        self._eos = eos
        self.remaining = max_tokens
        self.done = False

    def push(self, tier: int, ids: Sequence[int]) -> Chunk | None:
        """Append ``ids`` produced by ``tier``; the chunk to send (None if nothing shows)."""
        kept: list[int] = []
        text = ""
        for token in ids:
            if self.done:
                break
            if token in self._eos:
                self.finish(common_pb2.FINISH_REASON_STOP)
                break
            kept.append(token)
            self.remaining -= 1
            text += self._stops.feed(self._detok.push([token]))
            if self._stops.stopped:
                self.finish(common_pb2.FINISH_REASON_STOP)
            elif self.remaining == 0:
                self.finish(common_pb2.FINISH_REASON_LENGTH)
        if tier == common_pb2.TIER_EDGE:
            self._outcome.usage.edge_tokens += len(kept)
        else:
            self._outcome.usage.cloud_tokens += len(kept)
        return Chunk(tier, text, tuple(kept)) if kept or text else None

    def finish(self, reason: int) -> None:
        self.done = True
        self._outcome.finish_reason = reason

    def flush(self) -> Chunk | None:
        """Text held back for a possible stop string, once the answer has ended."""
        text = self._stops.flush()
        return Chunk(common_pb2.TIER_CLOUD, text) if text else None
