"""Choosing the speculative draft length from what is measured.

With per-token acceptance α, draft length γ, draft/target step-cost ratio c and round
trip ρ (in target-step units), a round yields E = (1 − α^(γ+1)) / (1 − α) tokens and
costs V(γ) + γc + ρ target steps, where V(γ) is the verify pass over γ + 1 tokens, so the
speed-up over the cloud alone is E / (V(γ) + γc + ρ). The brief's form takes V = 1, true
where a pass costs the same for any γ (a GPU reading its weights once); on a CPU each
verified token adds compute (here ~3% of a one-token step: 20.5 ms for one token, 27.3 ms
for 13), which makes long drafts dearer than they look. V comes from a line fitted to the
measured verify times against the tokens verified (γ varies: answers end, first drafts
are longer); until they vary enough, from a prior slope.

We keep running estimates of α, c, ρ and that line (shared by all requests of this
router) and pick the γ that maximises the speed-up, with E taken from the measured
acceptance of each draft position (the geometric form assumes one α for all requests).

Speculation is abandoned for the rest of a request only when even the best γ is predicted
slower than the cloud alone and measured rounds were slower too: acceptance varies
between requests more than a running α follows, and the prediction alone abandoned rounds
that were paying. The measured rounds are the request's own once it has had a few; before
that (a request's start), the recent rounds of all requests, and only when there were
enough of them: one unpredictable request must not stop speculation for the next ones.

Pipelined drafting (speculative.py) drafts a = ρ / c tokens past each draft during the
round trip. With probability P(γ + 1) (the whole draft and the edge's next token accepted)
they start the next round, which then spends min(a − 1, γ) fewer draft tokens; the
speed-up counts that saving, which favours shorter drafts on long links.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_DRAFT = 16
# Exponential moving average weight of a new observation.
EMA = 0.1
# Keep speculating unless predicted clearly slower (estimates are noisy).
ABANDON_BELOW = 0.9
# Abandoning stops the measurements that justified it; after this long without a round,
# speculate again to re-measure (load and links change).
REPROBE_AFTER_S = 5.0
# Before the verify-cost line can be fitted: each verified token beyond the first costs
# this fraction of a one-token step (measured on the CPU cloud engine: ~0.028).
PRIOR_VERIFY_SLOPE = 0.03
# A round counts as steady (its cost models the next rounds) when a tier ran at most this
# many tokens beyond the draft (the catch-up on the other tier's last token).
STEADY_EXTRA = 2
# Weight, in rounds, of the running α in each position's acceptance estimate.
CURVE_PRIOR = 2.0
# Tokens² of spread in the verified counts needed before trusting the fitted slope.
MIN_SPREAD = 4.0
# A verified token costs at most this share of a one-token pass (measured ~0.03 on the CPU
# engine, ~0 on a GPU). Without a cap, one slow pass at an unusual count tilted the line
# (4 ms a token, a 4.5 ms "step" against a real 22 ms), and the speed-up measured in such
# steps made a request abandon speculation that was paying.
MAX_VERIFY_SLOPE = 0.06
# Measured evidence for abandoning: steady rounds of the request itself, or at a
# request's start, steady rounds of all requests (without it, speculation goes on).
MIN_OWN_ROUNDS = 3
MIN_SHARED_ROUNDS = 30
# The shared evidence averages about the last 1 / SHARED_EMA steady rounds (a plain mean
# before that many): a few rounds of one request barely move it.
SHARED_EMA = 0.03


def expected_tokens(alpha: float, gamma: int) -> float:
    if alpha >= 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def predicted_speedup(alpha: float, gamma: int, cost_ratio: float, rtt_steps: float,
                      verify_slope: float = 0.0, tokens: float | None = None,
                      saved_steps: float = 0.0) -> float:
    """E / (V(γ) + γc + ρ − saved) with V(γ) = 1 + slope·γ target steps (slope 0: the
    brief's form); ``tokens`` replaces the geometric E when measured; ``saved_steps`` is
    the drafting a pipelined draft is expected to spare the next round."""
    verify_steps = 1.0 + verify_slope * gamma
    expected = expected_tokens(alpha, gamma) if tokens is None else tokens
    return expected / (verify_steps + gamma * cost_ratio + rtt_steps - saved_steps)


class AcceptanceCurve:
    """P(draft i is accepted | drafts 1..i-1 were), per position, from decayed counts.
    Requests differ in how predictable they are, and a mixture of them is not geometric:
    late positions are reached mostly by easy requests, so one α misjudges long drafts."""

    def __init__(self) -> None:
        self.reached = [0.0] * (MAX_DRAFT + 1)  # index i: rounds that judged position i
        self.passed = [0.0] * (MAX_DRAFT + 1)  # ... and accepted it

    def observe(self, drafted: int, accepted: int) -> None:
        keep = 1.0 - EMA / 4  # positions are seen less often than rounds: a longer memory
        for i in range(1, MAX_DRAFT + 1):
            self.reached[i] *= keep
            self.passed[i] *= keep
            if i <= min(drafted, accepted + 1):  # judged: every draft before it accepted
                self.reached[i] += 1.0
                self.passed[i] += float(i <= accepted)

    def survival(self, count: int, alpha: float) -> list[float]:
        """[P(drafts 1..i accepted) for i in 1..count]; positions with few rounds lean on
        ``alpha`` (positions past MAX_DRAFT: ``alpha`` alone)."""
        out, survive = [], 1.0
        for i in range(1, count + 1):
            seen = (self.passed[i], self.reached[i]) if i <= MAX_DRAFT else (0.0, 0.0)
            survive *= (seen[0] + CURVE_PRIOR * alpha) / (seen[1] + CURVE_PRIOR)
            out.append(survive)
        return out

    def expected_tokens(self, gamma: int, alpha: float) -> float:
        """1 + Σ_{i≤γ} P(drafts 1..i accepted)."""
        return 1.0 + sum(self.survival(gamma, alpha))


class CostLine:
    """Seconds as a line a + b·count, fitted by exponentially weighted least squares
    (recent rounds count most: load changes). Until the counts vary enough, ``prior``
    maps (mean count, mean seconds) to the line."""

    def __init__(self, prior: Callable[[float, float], tuple[float, float]],
                 max_slope_share: float | None = None) -> None:
        self.prior = prior
        self.max_slope_share = max_slope_share  # cap on b / (a + b), the cost of one more
        self.n = self.sx = self.sy = self.sxx = self.sxy = 0.0

    def observe(self, count: int, seconds: float) -> None:
        keep = 1.0 - EMA
        self.n = keep * self.n + 1.0
        self.sx = keep * self.sx + count
        self.sy = keep * self.sy + seconds
        self.sxx = keep * self.sxx + count * count
        self.sxy = keep * self.sxy + count * seconds

    def line(self) -> tuple[float, float] | None:
        """(a, b), or None before any observation."""
        if not self.n:
            return None
        mean_x, mean_y = self.sx / self.n, self.sy / self.n
        spread = self.sxx / self.n - mean_x ** 2
        if spread < MIN_SPREAD:
            return self.prior(mean_x, mean_y)
        slope = (self.sxy / self.n - mean_x * mean_y) / spread
        slope = min(max(slope, 0.0), mean_y / mean_x)  # no negative costs at either end
        if self.max_slope_share is not None:  # b <= m (a + b), with a = mean_y - b mean_x
            share = self.max_slope_share
            slope = min(slope, share * mean_y / (1.0 + share * (mean_x - 1.0)))
        return mean_y - slope * mean_x, slope


def verify_prior(mean_tokens: float, mean_s: float) -> tuple[float, float]:
    """Each verified token beyond the first costs PRIOR_VERIFY_SLOPE of a one-token pass."""
    step = mean_s / (1.0 + PRIOR_VERIFY_SLOPE * (mean_tokens - 1.0))
    return step * (1.0 - PRIOR_VERIFY_SLOPE), step * PRIOR_VERIFY_SLOPE


def draft_prior(mean_tokens: float, mean_s: float) -> tuple[float, float]:
    """All of a draft's time is per drafted token."""
    return 0.0, mean_s / max(mean_tokens, 1.0)


@dataclass
class RequestRounds:
    """One request's rounds, apart from other requests' (concurrent requests share the
    controller): the open round's draft time, and what its steady rounds delivered."""

    draft_s: float = 0.0  # the open round's draft time, until its verify
    draft_steady: bool = True  # ... and whether that draft was a steady one
    rounds: int = 0  # steady rounds so far
    tokens: int = 0  # ... the tokens they delivered
    seconds: float = 0.0  # ... and their draft + verify time


class DraftLengthController:
    def __init__(self, initial: int, adaptive: bool = True, pipelined: bool = True) -> None:
        self.initial = initial
        self.adaptive = adaptive
        self.pipelined = pipelined  # whether the policy drafts ahead during round trips
        # Optimistic priors until measured: high acceptance, cheap drafts, no RTT.
        self.alpha = 0.8
        self.draft_cost = CostLine(draft_prior)  # seconds vs tokens drafted
        self.verify_cost = CostLine(verify_prior, MAX_VERIFY_SLOPE)  # seconds vs tokens verified
        self.curve = AcceptanceCurve()
        self.rtt_s = 0.0
        self._accepted: float | None = None  # EMA of accepted drafts per round
        self._trials: float | None = None  # EMA of accepted + rejected drafts per round
        self._observations = 0
        self._last_round = 0.0
        self._steady_rounds = 0  # of all requests
        self._round_tokens: float | None = None  # average tokens a steady round delivers
        self._round_s: float | None = None  # ... and its draft + verify time

    def _ratios(self) -> tuple[float, float, float]:
        """c, ρ and the verify slope, in units of a one-token cloud pass. A draft's fixed
        cost per round (the call, catching up on the cloud's token) counts into ρ."""
        draft, verify = self.draft_cost.line(), self.verify_cost.line()
        if draft is None or verify is None or sum(verify) <= 0:
            return 0.1, 0.0, PRIOR_VERIFY_SLOPE
        step = sum(verify)  # a + b·1
        return draft[1] / step, (self.rtt_s + draft[0]) / step, verify[1] / step

    def _best(self) -> tuple[int, float]:
        c, rho, slope = self._ratios()
        ahead = self.ahead_tokens()
        survive = self.curve.survival(MAX_DRAFT + 1, self.alpha)

        def speedup(g: int) -> float:
            saved = survive[g] * min(ahead - 1, g) * c if ahead >= 2 else 0.0
            return predicted_speedup(self.alpha, g, c, rho, slope, 1.0 + sum(survive[:g]), saved)

        return max(((g, speedup(g)) for g in range(1, MAX_DRAFT + 1)), key=lambda pair: pair[1])

    def ahead_tokens(self) -> int:
        """Draft tokens that fit in the measured round trip (what pipelined drafting makes
        while a draft is verified); 0 until drafts were measured."""
        draft = self.draft_cost.line()
        if not (self.adaptive and self.pipelined) or draft is None or draft[1] <= 0:
            return 0
        return min(int(self.rtt_s / draft[1]), MAX_DRAFT)

    def choose(self) -> int:
        if not self.adaptive or self._observations < 3:
            return self.initial
        return self._best()[0]

    def measured_speedup(self, request: RequestRounds | None = None) -> float | None:
        """What rounds delivered, as tokens per second times a cloud pass: ``request``'s
        steady rounds, or the recent ones of all requests."""
        verify = self.verify_cost.line()
        if request is not None:
            tokens, seconds = request.tokens, request.seconds
        else:
            tokens, seconds = self._round_tokens or 0.0, self._round_s
        if not seconds or verify is None:
            return None
        return tokens / seconds * sum(verify)

    def should_abandon(self, request: RequestRounds) -> bool:
        """Only when the model predicts a loss and enough measured rounds agree (the model
        misjudges when acceptance varies a lot between requests)."""
        if not self.adaptive or self._observations < 3:
            return False
        if request.rounds >= MIN_OWN_ROUNDS:
            measured = self.measured_speedup(request)
        elif (self._steady_rounds >= MIN_SHARED_ROUNDS
              and time.monotonic() - self._last_round <= REPROBE_AFTER_S):
            measured = self.measured_speedup()
        else:  # too little evidence, or too old: speculate and measure
            return False
        return measured is not None and measured < ABANDON_BELOW and self._best()[1] < ABANDON_BELOW

    def observe_draft(self, seconds: float, drafted: int, computed: int | None = None,
                      request: RequestRounds | None = None) -> None:
        """One draft: its wall time, tokens drafted and tokens the edge ran (a round that
        also processes a prompt is not a steady round's cost and is left out). ``request``
        is the request whose round waited for it; None for a pipelined draft, which ran
        during a verify: it measures the draft cost but adds nothing to a round's time."""
        steady = computed is None or computed <= drafted + STEADY_EXTRA
        if request is not None:
            request.draft_s, request.draft_steady = seconds, steady
        if drafted and steady:
            self.draft_cost.observe(drafted, seconds)

    def observe_verify(self, request: RequestRounds, wall_s: float, cloud_s: float,
                       drafted: int, accepted: int, computed: int | None = None) -> None:
        """One verify round of ``request``: its wall time, the cloud's own compute time, the
        outcome and the tokens the cloud ran (rounds that also process a prompt: as in
        observe_draft)."""
        steady = computed is None or computed <= drafted + 1 + STEADY_EXTRA
        if steady:
            self.verify_cost.observe(drafted + 1, cloud_s)
        if drafted:
            self.curve.observe(drafted, accepted)
        if steady and request.draft_steady:  # a prompt's first round says little of the next
            round_s = request.draft_s + wall_s
            request.rounds += 1
            request.tokens += accepted + 1
            request.seconds += round_s
            self._steady_rounds += 1
            weight = max(SHARED_EMA, 1.0 / self._steady_rounds)
            self._round_tokens = _ema(self._round_tokens, accepted + 1, weight)
            self._round_s = _ema(self._round_s, round_s, weight)
        request.draft_s, request.draft_steady = 0.0, True
        rtt_s = max(wall_s - cloud_s, 0.0)  # the first round starts the average
        self.rtt_s = rtt_s if self._observations == 0 else _ema(self.rtt_s, rtt_s)
        if drafted:
            # Each round is a geometric trial censored at `drafted`: successes until the
            # first rejection. α = successes / (successes + failures), smoothed.
            self._accepted = _ema(self._accepted, accepted)
            self._trials = _ema(self._trials, accepted + (0 if accepted == drafted else 1))
            if self._trials:
                self.alpha = min(self._accepted / self._trials, 0.99)
        self._observations += 1
        self._last_round = time.monotonic()


def _ema(previous: float | None, value: float, weight: float = EMA) -> float:
    return value if previous is None else (1 - weight) * previous + weight * value
