"""Turning token streams into text: incremental detokenization and stop strings."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
