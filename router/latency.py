"""The router's own latency, split into parts and accumulated into the request's Timings.

- ``state_ns``: state-store calls (session history and append, rate limit, token budget
  and its refund, response-cache lookup and put, statistics, cascade threshold).
- ``decision_ns``: the router's own decision work: validation, prompt rendering and the
  policy's choices (confidence scoring, threshold comparison, draft length).
- ``scoring_ns``: running an embedding model for a decision (the learned scorer, the
  prompt router), kept apart so "policy decision" is not conflated with model inference.

Not counted anywhere here: waiting on the tiers (edge_ns / cloud_ns), relaying chunks,
detokenization and gRPC work; those stay in ``overhead_ns`` (total - edge - cloud), so
state + decision + scoring <= overhead. The timed sections never nest: each wraps its
own piece of work, so the parts add up without double counting.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from tandem.router.scorers import EmbeddingHead
from tandem.v1 import common_pb2

STATE: Final = "state_ns"
DECISION: Final = "decision_ns"
SCORING: Final = "scoring_ns"
PARTS: Final = (STATE, DECISION, SCORING)


@contextmanager
def spent(timings: common_pb2.Timings, part: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``timings.<part>``."""
    started = time.perf_counter_ns()
    try:
        yield
    finally:
        setattr(timings, part, getattr(timings, part) + time.perf_counter_ns() - started)


def scorer_part(scorer: object) -> str:
    """SCORING for scorers that run the MiniLM encoder, DECISION for arithmetic ones."""
    return SCORING if isinstance(scorer, EmbeddingHead) else DECISION


def added_ns(timings: common_pb2.Timings) -> int:
    """Router-added latency as the target defines it: policy decision + state access
    (embedding-model scoring excluded; it is reported on its own)."""
    return timings.state_ns + timings.decision_ns
