"""Turning token streams into answer text: incremental detokenization, stop strings, and
the end-of-generation rule both tiers and the router's own decoding apply."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from tandem.v1 import common_pb2

Decode = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    """Emits the text added by each new token without re-decoding the whole output.

    Decodes a short window of recent tokens and returns only the new suffix; holds text
    back while it ends in an incomplete UTF-8 sequence (U+FFFD).
    """

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self.tokens: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_ids: Sequence[int]) -> str:
        self.tokens.extend(token_ids)
        prefix_text = self._decode(self.tokens[self._prefix_offset:self._read_offset])
        full_text = self._decode(self.tokens[self._prefix_offset:])
        if full_text.endswith("\ufffd") or len(full_text) <= len(prefix_text):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.tokens)
        return full_text[len(prefix_text):]


class StopStringMatcher:
    """Cuts a text stream at the first stop string, holding back possible partial matches."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Returns the text that is safe to emit; sets ``stopped`` when a stop string hit."""
        if self.stopped:
            return ""
        self._pending += delta
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self._pending = self._pending[:min(hits)], ""
            return out
        if self._hold == 0:
            out, self._pending = self._pending, ""
            return out
        out, self._pending = self._pending[:-self._hold], self._pending[-self._hold:]
        return out

    def flush(self) -> str:
        """The held-back text, once the stream has ended without a stop."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out


class AnswerText:
    """An answer's text, token by token, under the end-of-generation rule: an end token
    ends the answer and is not part of it; a stop string ends it, cut before the match;
    ``max_tokens`` ends it after that many tokens. ``finish_reason`` says which rule
    ended it (FINISH_REASON_STOP or _LENGTH)."""

    def __init__(self, decode: Decode, stop: Sequence[str], max_tokens: int,
                 end_ids: Collection[int]) -> None:
        self._detok = IncrementalDetokenizer(decode)
        self._stops = StopStringMatcher(stop)
        self._end_ids = end_ids
        self.remaining = max_tokens
        self.finish_reason = common_pb2.FINISH_REASON_UNSPECIFIED

    @property
    def done(self) -> bool:
        return self.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED

    def push(self, token: int) -> str | None:
        """The text ``token`` adds (held back while it may start a stop string), or None
        when the token is not part of the answer (an end token, or the answer ended)."""
        if self.done:
            return None
        if token in self._end_ids:
            self.finish(common_pb2.FINISH_REASON_STOP)
            return None
        self.remaining -= 1
        text = self._stops.feed(self._detok.push([token]))
        if self._stops.stopped:
            self.finish(common_pb2.FINISH_REASON_STOP)
        elif self.remaining == 0:
            self.finish(common_pb2.FINISH_REASON_LENGTH)
        return text

    def finish(self, reason: int) -> None:
        """End the answer for a reason decided elsewhere (e.g. the tier that produced it)."""
        self.finish_reason = reason  # type: ignore[assignment]

    def flush(self) -> str:
        """Text held back for a possible stop string, once the answer has ended."""
        return self._stops.flush()
