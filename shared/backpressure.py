"""Back-pressure of a model tier (edge slots, the cloud's batch): admission on predicted
completion times, before any model work.

Both tiers run in steps: each step evaluates the next token of every decoding request in
the batch (and chunks of new prompts), and a step takes longer the more tokens it holds
(on two cores a cloud step of 32 sequences takes ~2.3x one of 1, an edge step of 8 slots
~4x). A request's time on the model is therefore its remaining steps times the step time
of the batch it shares, and every request admitted slows the others: a tier that admits
whatever fits its batch lets most of an overload time out (measured: 204 of 228 admitted
requests under 4x overload when the cloud admitted up to its 32 sequences).

So the tier times every step (``StepTimes``: seconds as a line in the step's tokens,
fitted over recent steps, which follows the slowdown that sharing cores causes) and, for a
request arriving, simulates the batch: running requests advance a token a step and a freed
place takes the next waiting one. The request is refused with RESOURCE_EXHAUSTED and a
retry-after hint, before any model work, when

- ``max_waiting`` requests already wait (``queue_full``);
- it would not end within its own deadline (``deadline``);
- it would make an admitted request that ends in time miss its deadline (``protect``):
  admitted requests keep their latency under overload, the rest are refused at once.

Both deadline checks allow for how much longer than predicted the recently admitted
requests took (``slowdown``), which catches what the tier's own steps cannot see.

Tenants share the tier fairly: a request joins the waiting queue ahead of the requests
further down their tenant's line than it is in its own (``fair_place``), and it is not
refused to protect the requests of a tenant holding more of the tier than its own would:
a tenant flooding the tier cannot make another tenant's requests wait behind, or be
refused for, its backlog.

The same simulation gives the wait a tier reports in Load for load-aware routing.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from tandem.shared.deadlines import Deadline
from tandem.shared.errors import ResourceExhausted
from tandem.shared.metrics import LATENCY_BUCKETS
from tandem.v1 import common_pb2

# Weight of older steps in the fit: each step counts this much less than the next (the
# fit reflects about the last 50 steps, a few seconds under load).
STEP_DECAY = 0.98
# Until steps of more than one size were seen, each token beyond the first is assumed to
# add this share of the measured step (pessimistic: a batch grows only as far as fits).
PRIOR_TOKEN_SHARE = 0.25
# A request must be predicted to end within this share of its remaining deadline. The
# prediction is made from this tier's own steps, but the tiers of one machine share its
# cores: under overload the other tier's growing batch slowed this one's steps ~2x after
# admission (an edge alone kept every admitted request within 0.8 of its deadline; beside
# a loaded cloud none of them), and the answer still has to reach the client.
HEADROOM = 0.5
# And it is scaled by how much longer than predicted admitted requests recently took (an
# average over the last few, never below 1 nor above MAX_SLOWDOWN): what the steps of this
# tier cannot see slows its requests too, such as the other tier's batch on the same
# cores. Measured under a 4x overload of the whole stack on two cores: admitted cloud
# requests took 1.3-2.2x their prediction.
SLOWDOWN_EWMA = 0.2
MAX_SLOWDOWN = 4.0
# Answers end at a stop token long before max_tokens as often as not: a request is
# expected to generate up to this multiple of the recent mean output length.
LENGTH_MARGIN = 1.5
LENGTH_EWMA = 0.1
RATIO_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
# Retry hint when nothing has been measured yet, and the least one given.
DEFAULT_RETRY_S = 1.0
MIN_RETRY_S = 0.05


@dataclass(frozen=True)
class Work:
    """What a request still needs of the model."""

    prompt_tokens: int  # prompt tokens not yet evaluated
    steps: int  # steps still to run: one per prompt chunk, then one per token to generate
    deadline: Deadline | None = None
    tenant: str = ""


def tenant_ranks(tenants: Sequence[str]) -> list[int]:
    """For each request (by tenant; running first, then waiting in queue order), its
    place in its own tenant's line: 1 for a tenant's first, 2 for its second..."""
    held: collections.Counter[str] = collections.Counter()
    ranks = []
    for tenant in tenants:
        held[tenant] += 1
        ranks.append(held[tenant])
    return ranks


def fair_place(tenant: str, running: Sequence[str], waiting: Sequence[str]) -> int:
    """Where a new request of ``tenant`` joins the waiting queue: after its own tenant's
    waiting requests, before the first one further down its tenant's line than this one
    is in its own (a tenant's n-th request waits behind every tenant's (n-1)-th)."""
    ranks = tenant_ranks([*running, *waiting])[len(running):]
    mine = sum(1 for t in [*running, *waiting] if t == tenant) + 1
    after_own = max((i + 1 for i, t in enumerate(waiting) if t == tenant), default=0)
    return next((i for i in range(after_own, len(waiting)) if ranks[i] > mine), len(waiting))


class StepTimes:
    """A step's seconds as ``fixed + per_token * tokens``: exponentially weighted least
    squares over recent steps."""

    def __init__(self, decay: float = STEP_DECAY) -> None:
        self.decay = decay
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    @property
    def measured(self) -> bool:
        return self._w > 0

    def record(self, tokens: int, seconds: float) -> None:
        d = self.decay
        self._w = d * self._w + 1
        self._x = d * self._x + tokens
        self._y = d * self._y + seconds
        self._xx = d * self._xx + tokens * tokens
        self._xy = d * self._xy + tokens * seconds

    def line(self) -> tuple[float, float]:
        """(fixed seconds, seconds per token) of a step; (0, 0) until measured."""
        if not self.measured:
            return 0.0, 0.0
        mean_x, mean_y = self._x / self._w, self._y / self._w
        var = self._xx / self._w - mean_x * mean_x
        # At most proportional to the tokens (a step of 2n tokens takes <= 2x one of n).
        steepest = mean_y / max(mean_x, 1.0)
        if var > 0.25:  # steps of different sizes: fit the slope
            slope = (self._xy / self._w - mean_x * mean_y) / var
        else:  # one size so far
            slope = PRIOR_TOKEN_SHARE * steepest
        slope = min(max(slope, 0.0), steepest)
        return max(mean_y - slope * mean_x, 0.0), slope

    def seconds(self, tokens: int) -> float:
        fixed, per_token = self.line()
        return fixed + per_token * tokens


def timeline(running: Sequence[Work], waiting: Sequence[Work], capacity: int,
             steps: StepTimes) -> tuple[list[float], list[float]]:
    """Predicted (starts, ends), in seconds from now, of each piece of work: ``running``
    first, then ``waiting`` in order. Every step advances each running piece by one; a
    prompt costs its tokens once; a freed place takes the next waiting piece."""
    fixed, per_token = steps.line()
    works = list(running) + list(waiting)
    starts, ends = [0.0] * len(works), [0.0] * len(works)
    left = {i: w.steps for i, w in enumerate(running)}
    now = per_token * sum(w.prompt_tokens for w in running)
    following = len(running)
    while left or following < len(works):
        while len(left) < capacity and following < len(works):
            work = works[following]
            starts[following] = now
            now += per_token * work.prompt_tokens
            left[following] = work.steps
            following += 1
        if not left:
            break
        stride = min(left.values())  # steps until the next piece ends
        now += stride * (fixed + per_token * len(left))
        for i in list(left):
            left[i] -= stride
            if left[i] <= 0:
                ends[i] = now
                del left[i]
    return starts, ends


class Backpressure:
    def __init__(self, tier: str, capacity: int, max_waiting: int,
                 registry: CollectorRegistry) -> None:
        self.tier = tier
        self.capacity = capacity  # requests the model serves at once
        self.max_waiting = max_waiting
        self.steps = StepTimes()
        self.mean_output = 0.0  # EWMA of generated tokens per finished request; 0: none yet
        self.slowdown = 1.0  # EWMA of took / predicted of admitted requests, in [1, MAX]
        self.rejections = Counter(f"tandem_{tier}_queue_rejections",
                                  f"{tier} requests refused before model work, by reason.",
                                  ["reason"], registry=registry)
        self.prediction = Histogram(f"tandem_{tier}_admission_time_ratio",
                                    f"Time {tier} requests took over the time admission "
                                    "predicted (above 1: it was optimistic).",
                                    buckets=RATIO_BUCKETS, registry=registry)
        self.queue_time = Histogram(f"tandem_{tier}_queue_wait_seconds",
                                    f"Time {tier} requests waited for the model.",
                                    buckets=LATENCY_BUCKETS, registry=registry)

    def generation(self, prompt_left: int, chunk: int, max_tokens: int, produced: int,
                   deadline: Deadline | None, tenant: str = "") -> Work:
        """The work left of a generation: its prompt's chunks, then its tokens, expected
        to end by ``LENGTH_MARGIN`` x the mean output length when that is below
        max_tokens (a request past that is expected to go on a quarter as long again)."""
        left = max_tokens - produced
        if self.mean_output:
            expected = min(max_tokens, math.ceil(LENGTH_MARGIN * self.mean_output))
            left = min(left, max(expected - produced, math.ceil(expected / 4)))
        return Work(prompt_left, -(-prompt_left // chunk) + max(left, 0), deadline, tenant)

    def generated(self, tokens: int, max_tokens: int) -> None:
        """A generation ended after ``tokens`` tokens. One cut at its max_tokens only says
        its answer would have been at least that long: it counts when that raises the
        mean, else requests with small limits (a fuzzer's, a probe's) had admission expect
        answers of a few tokens (with cancelled ones, 32-token answers then took 12-16x
        their prediction)."""
        if tokens >= max_tokens and tokens <= self.mean_output:
            return
        self.mean_output = (tokens if not self.mean_output
                            else (1 - LENGTH_EWMA) * self.mean_output + LENGTH_EWMA * tokens)

    def forget_lengths(self) -> None:
        self.mean_output = 0.0

    def estimated_wait_s(self, running: Sequence[Work], waiting: Sequence[Work]) -> float:
        """Predicted wait of a request arriving now before its first step."""
        starts, _ = timeline(running, [*waiting, Work(0, 1)], self.capacity, self.steps)
        return starts[-1]

    def place(self, work: Work, running: Sequence[Work], waiting: Sequence[Work]) -> int:
        """Where ``work`` joins the waiting queue (``fair_place``)."""
        return fair_place(work.tenant, [w.tenant for w in running], [w.tenant for w in waiting])

    def admit(self, work: Work, running: Sequence[Work], waiting: Sequence[Work],
              place: int | None = None) -> float | None:
        """Raise ResourceExhausted (with retry-after) for ``work`` when the queue is full,
        it would miss its deadline, or it would make an admitted request miss its own;
        else return the seconds it is predicted to take (None: nothing to predict with).
        ``place``: where it joins the waiting queue (default ``self.place``; 0 for a draft:
        a few tokens that a request under way waits on, whose refusal only makes that
        request go on without it)."""
        queued = max(len(running) + len(waiting) - self.capacity, 0)
        _, base_ends = timeline(running, waiting, self.capacity, self.steps)
        ends_running = base_ends[:len(running)]
        retry = round(max(min(ends_running, default=0.0), MIN_RETRY_S)
                      if self.steps.measured else DEFAULT_RETRY_S, 3)
        if queued >= self.max_waiting:
            self._refuse("queue_full", f"{self.tier} queue is full ({queued} waiting, "
                         f"{len(running)} running)", retry)
        if not self.steps.measured:  # the tiers time steps before serving (warm_up)
            return None
        if place is None:
            place = self.place(work, running, waiting)
        mine = len(running) + place
        starts, ends = timeline(running, [*waiting[:place], work, *waiting[place:]],
                                self.capacity, self.steps)
        mine_start, mine_end = starts[mine], ends[mine]
        others, ends_with = [*running, *waiting], ends[:mine] + ends[mine + 1:]
        remaining = work.deadline.remaining() if work.deadline is not None else None
        idle = not (running or waiting)  # an idle model admits anything: nobody waits on it
        if not idle and remaining is not None and mine_end > self._allowed(remaining):
            self._refuse("deadline", f"{self.tier} is busy: estimated wait {mine_start:.2f} s "
                         f"+ service {mine_end - mine_start:.2f} s exceeds the request's "
                         f"remaining {max(remaining, 0.0):.2f} s ({queued} waiting, "
                         f"{len(running)} running)", retry)
        # The requests of a tenant that holds more of the tier than this one's tenant
        # would are not protected from it.
        held = collections.Counter(w.tenant for w in others)
        mine_held = held[work.tenant] + 1
        for other, before, after in zip(others, base_ends, ends_with):
            left = other.deadline.remaining() if other.deadline is not None else None
            if (left is not None and before <= self._allowed(left) < after
                    and held[other.tenant] <= mine_held):
                self._refuse("protect", f"{self.tier} is busy: admitting this request would "
                             f"make an admitted one miss its deadline ({queued} waiting, "
                             f"{len(running)} running)", retry)
        return mine_end

    def _allowed(self, remaining_s: float) -> float:
        """The latest predicted end that keeps a deadline ``remaining_s`` away."""
        return HEADROOM * remaining_s / self.slowdown

    def ended(self, predicted_s: float | None, took_s: float, finished: bool = True) -> None:
        """An admitted request ended after ``took_s``: ``finished``, or cancelled (by its
        caller or its deadline); how far off its prediction was. A cancelled one that
        outlasted its prediction counts too, with what it had taken so far: the requests
        admission was most wrong about are the ones whose deadline cut them short."""
        if not predicted_s:
            return
        ratio = took_s / predicted_s
        if finished:
            self.prediction.observe(ratio)
        elif ratio <= 1.0:  # cancelled within its prediction: says nothing of it
            return
        self.slowdown = min(max((1 - SLOWDOWN_EWMA) * self.slowdown + SLOWDOWN_EWMA * ratio,
                                1.0), MAX_SLOWDOWN)

    def _refuse(self, reason: str, message: str, retry_s: float) -> None:
        self.rejections.labels(reason).inc()
        raise ResourceExhausted(message, retry_s)

    def started(self, waited_s: float) -> None:
        self.queue_time.observe(waited_s)

    def stepped(self, tokens: int, seconds: float) -> None:
        """A model step of ``tokens`` tokens took ``seconds``."""
        self.steps.record(tokens, seconds)

    def load(self, running: Sequence[Work], waiting: Sequence[Work]) -> common_pb2.TierLoad:
        return common_pb2.TierLoad(
            queued=max(len(running) + len(waiting) - self.capacity, 0), running=len(running),
            capacity=self.capacity, max_queued=self.max_waiting,
            estimated_wait_ms=self.estimated_wait_s(running, waiting) * 1e3)
