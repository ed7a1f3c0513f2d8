"""The provenance record every part of Tandem shares: a piece of an answer and the tier
that produced it, and how consecutive pieces of one tier join into an answer's segments.
Policies stream them, the router folds them into a response, the SDK hands them to apps
(with the tier as a name: "edge", "cloud")."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

TierT = TypeVar("TierT")


@dataclass(frozen=True)
class Segment(Generic[TierT]):
    """A piece of an answer (streamed) or a contiguous run of it (merged) from one tier."""

    tier: TierT
    text: str
    token_ids: tuple[int, ...] = ()


def merge_by_tier(pieces: Iterable[Segment[TierT]]) -> list[Segment[TierT]]:
    """Consecutive pieces of the same tier joined into one segment."""
    segments: list[Segment[TierT]] = []
    for piece in pieces:
        if segments and segments[-1].tier == piece.tier:
            last = segments[-1]
            segments[-1] = Segment(last.tier, last.text + piece.text,
                                   last.token_ids + piece.token_ids)
        else:
            segments.append(piece)
    return segments
