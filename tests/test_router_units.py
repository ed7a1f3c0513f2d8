"""Router pieces without models: draft-length choice, the emitter, the cascade curve and
APGR, the logistic head, response-cache keys, agreement metrics, the router-latency
timers, and the batched state operations (admission, completion) on memory and Redis."""

import numpy as np
import pytest

from tandem.router.eval.agreement import rouge_l, token_f1
from tandem.router.eval.cascade import (Costs, apgr, cost_reduction_at, curve, random_baseline,
                                        summarise)
from tandem.router.eval.checkable import is_correct
from tandem.router.eval.train import threshold_for_budget, threshold_for_quality
from tandem.router.head import LogisticHead
from tandem.router.policies.base import Outcome, RoutedRequest
from tandem.router.policies.draft_length import (DraftLengthController, RequestRounds,
                                                 expected_tokens, predicted_speedup)
from tandem.router.policies.emitter import Emitter
from tandem.router.policies.spill import edge_too_busy
from tandem.router.response_cache import cache_key
from tandem.shared.deadlines import Deadline
from tandem.shared.sampling import SamplingParams
from tandem.v1 import common_pb2


def test_expected_tokens_matches_the_geometric_formula():
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(0.5, 1) == pytest.approx(1.5)
    assert expected_tokens(1.0, 4) == 5.0


def feed(controller, rounds, alpha, draft_s, step_s, rtt_s, k=6, request=None):
    rng, request = np.random.default_rng(0), request or RequestRounds()
    for _ in range(rounds):
        accepted = 0
        while accepted < k and rng.random() < alpha:
            accepted += 1
        controller.observe_draft(draft_s * k, k, request=request)
        controller.observe_verify(request, step_s + rtt_s, step_s, k, accepted)


def test_draft_length_grows_with_rtt_and_acceptance():
    no_rtt, with_rtt = DraftLengthController(6), DraftLengthController(6)
    feed(no_rtt, 200, alpha=0.8, draft_s=0.005, step_s=0.05, rtt_s=0.0)
    feed(with_rtt, 200, alpha=0.8, draft_s=0.005, step_s=0.05, rtt_s=0.1)
    assert no_rtt.alpha == pytest.approx(0.8, abs=0.08)
    assert with_rtt.choose() >= no_rtt.choose() >= 2
    assert not no_rtt.should_abandon(RequestRounds())


def simulate(controller, rounds, alpha, draft_s, verify_s, seed=0):
    """Rounds as the speculative policy runs them: the controller picks k, the answer's
    remaining room sometimes cuts it (so the verified counts vary)."""
    rng, request = np.random.default_rng(seed), RequestRounds()
    for _ in range(rounds):
        k = min(controller.choose(), int(rng.integers(1, 20)))
        accepted = 0
        while accepted < k and rng.random() < alpha:
            accepted += 1
        controller.observe_draft(draft_s(k), k, request=request)
        controller.observe_verify(request, verify_s(k + 1), verify_s(k + 1), k, accepted)


def true_speedup(alpha, gamma, draft_s, verify_s):
    return expected_tokens(alpha, gamma) * verify_s(1) / (draft_s(gamma) + verify_s(gamma + 1))


@pytest.mark.parametrize("name, verify_s", [
    ("cpu", lambda n: 0.0195 + 0.0006 * n),  # the CPU cloud engine: ~3% of a step per token
    ("flat", lambda n: 0.020)])  # a pass costs the same for any length (a GPU)
def test_draft_length_follows_the_measured_verify_cost(name, verify_s):
    alpha = 0.93
    draft_s = lambda k: 0.004 + 0.0054 * k  # fixed call cost + per drafted token
    controller = DraftLengthController(6)
    simulate(controller, 300, alpha, draft_s, verify_s)
    best = max(true_speedup(alpha, g, draft_s, verify_s) for g in range(1, 17))
    chosen = controller.choose()
    assert true_speedup(alpha, chosen, draft_s, verify_s) >= 0.95 * best
    if name == "cpu":  # taking a pass as flat would have drafted longer than pays
        flat_choice = max(range(1, 17), key=lambda g: predicted_speedup(
            alpha, g, 0.0054 / verify_s(1), 0.004 / verify_s(1)))
        assert chosen < flat_choice


def test_acceptance_curve_follows_a_mixture_of_easy_and_hard_requests():
    """Half the rounds from predictable requests (α = 0.99), half from hard ones (0.3),
    drafting 8: the per-position curve predicts what a 3-token draft would yield; one
    pooled α (right on average at 8) overestimates it."""
    controller, rng = DraftLengthController(8, adaptive=False), np.random.default_rng(1)
    for r in range(400):
        alpha, accepted = (0.99 if r % 2 else 0.3), 0
        while accepted < 8 and rng.random() < alpha:
            accepted += 1
        controller.observe_verify(RequestRounds(), 0.02, 0.02, 8, accepted)
    truth = 0.5 * expected_tokens(0.99, 3) + 0.5 * expected_tokens(0.3, 3)
    assert controller.curve.expected_tokens(3, controller.alpha) == pytest.approx(truth, rel=0.05)
    assert expected_tokens(controller.alpha, 3) > 1.1 * truth


def test_pipelined_drafting_fits_the_measured_round_trip():
    """Draft tokens made during a verify's round trip: none without one (or when turned
    off), about rtt / per-token draft time with one; the saving they promise counts."""
    local, far, off = (DraftLengthController(6), DraftLengthController(6),
                       DraftLengthController(6, pipelined=False))
    feed(local, 50, alpha=0.9, draft_s=0.006, step_s=0.02, rtt_s=0.0)
    feed(far, 50, alpha=0.9, draft_s=0.006, step_s=0.02, rtt_s=0.06)
    feed(off, 50, alpha=0.9, draft_s=0.006, step_s=0.02, rtt_s=0.06)
    assert local.ahead_tokens() == 0 and off.ahead_tokens() == 0
    assert 9 <= far.ahead_tokens() <= 10  # 60 ms / 6 ms per drafted token
    assert far._best()[1] > off._best()[1]
    # pipelined drafts measure the draft cost but add nothing to a round's time
    request = RequestRounds()
    far.observe_draft(1.0, 6)
    far.observe_verify(request, 0.08, 0.02, 6, 6)
    assert request.seconds == pytest.approx(0.08)


def test_speculation_is_abandoned_when_it_cannot_pay():
    controller = DraftLengthController(6)
    feed(controller, 200, alpha=0.05, draft_s=0.03, step_s=0.05, rtt_s=0.05)
    assert controller.should_abandon(RequestRounds())  # many slow rounds: not even started
    c, rho = 0.6, 1.0
    assert predicted_speedup(0.05, controller.choose(), c, rho) < 1.0
    controller._last_round -= 60  # a while without rounds: probe again
    assert not controller.should_abandon(RequestRounds())
    slow = RequestRounds()  # ... until the request's own rounds say the same
    feed(controller, 3, alpha=0.05, draft_s=0.03, step_s=0.05, rtt_s=0.05, request=slow)
    assert controller.should_abandon(slow)


def test_one_unpredictable_request_does_not_stop_speculation_for_the_next():
    """A fresh router whose first request drafts badly abandons that request after a
    few of its own rounds, but the next request speculates (and measures) again."""
    controller, first = DraftLengthController(6), RequestRounds()
    feed(controller, 2, alpha=0.05, draft_s=0.03, step_s=0.05, rtt_s=0.05, request=first)
    assert not controller.should_abandon(first)  # two rounds are not evidence yet
    feed(controller, 2, alpha=0.05, draft_s=0.03, step_s=0.05, rtt_s=0.05, request=first)
    assert controller.should_abandon(first)
    assert not controller.should_abandon(RequestRounds())


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i) for i in ids)


def test_emitter_stops_at_eos_stop_string_and_max_tokens():
    outcome = Outcome("speculative")
    emitter = Emitter(_Tok(), ["cd"], 10, frozenset({25}), outcome)
    chunk = emitter.push(common_pb2.TIER_EDGE, [0, 1, 2, 3, 4])  # "abcde": stops at "cd"
    assert chunk.text == "ab" and emitter.done
    assert outcome.finish_reason == common_pb2.FINISH_REASON_STOP
    outcome = Outcome("speculative")
    emitter = Emitter(_Tok(), [], 3, frozenset({25}), outcome)
    emitter.push(common_pb2.TIER_EDGE, [0, 1])
    emitter.push(common_pb2.TIER_CLOUD, [2, 3])
    assert emitter.done and outcome.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert (outcome.usage.edge_tokens, outcome.usage.cloud_tokens) == (2, 1)


def test_curve_apgr_and_cost_reduction_of_a_perfect_and_a_random_router():
    quality = np.array([1.0, 1.0, 1.0, 0.0])  # one bad edge answer in four
    tokens = np.array([10, 10, 10, 10])
    perfect = np.array([0.9, 0.8, 0.7, 0.1])  # the bad answer scores lowest
    cost, q = curve(perfect, quality, tokens)
    assert list(cost) == [0.0, 0.25, 0.5, 0.75, 1.0] and q[1] == 1.0
    assert cost_reduction_at(cost, q, 0.95) == pytest.approx(0.75)
    assert apgr(cost, q, q_edge=0.75) == pytest.approx(0.875, abs=0.01)
    costs = Costs(tokens, tokens, np.zeros(4), np.ones(4))
    assert random_baseline(quality, costs)["apgr"] == pytest.approx(0.5, abs=0.1)


def test_a_judged_scorer_pays_the_judging_on_the_pass_axis_and_the_cloud_may_be_wrong():
    """Pass axis: a cloud-judged scorer's curve starts at the judging's share. Checkable
    answers: escalating gains the cloud's quality, which may be lower than the edge's."""
    edge = np.array([1.0, 0.0, 0.0, 1.0])
    cloud = np.array([1.0, 1.0, 1.0, 0.0])  # the cloud is wrong where the edge is right
    costs = Costs(tokens=np.full(4, 10.0), passes=np.full(4, 10.0),
                  judge_passes=np.full(4, 1.0), cloud_quality=cloud)
    cost, quality = curve(np.array([0.9, 0.1, 0.5, 0.8]), edge, costs.passes, cloud, 0.1)
    assert list(cost) == pytest.approx([0.1, 0.35, 0.6, 0.85, 1.1])
    assert list(quality) == [0.5, 0.75, 1.0, 0.75, 0.75]
    judged = summarise(np.array([0.9, 0.1, 0.5, 0.8]), edge, costs, judged=True)
    free = summarise(np.array([0.9, 0.1, 0.5, 0.8]), edge, costs)
    assert judged["passes"]["judge_share"] == 0.1 and free["passes"]["judge_share"] == 0.0
    assert judged["apgr"] == free["apgr"] > judged["passes"]["apgr"]
    assert free["passes"]["apgr"] == free["apgr"]  # same costs on both axes here


def test_checkable_answers_are_graded_whatever_the_wording():
    assert is_correct("12 plus 7 equals 19.", "What is 12 plus 7?", ["19"])
    assert not is_correct("The answer is 21, not 19.", "What is 12 plus 7?", ["19"])
    assert is_correct("There are five letters in it.", 'How many letters in "apple"?',
                      ["5", "five"])
    assert is_correct("7 weeks have 49 days.", "How many days are in 7 weeks?", ["49"])
    assert is_correct("That is 3,000 meters.", "How many meters are in 3 kilometers?", ["3000"])
    assert not is_correct("I do not know.", "What is 2 plus 2?", ["4", "four"])
    assert is_correct("The capital of Colombia is Bogotá.", "Capital of Colombia?", ["Bogota"])
    assert not is_correct("It is Bogotana.", "Capital of Colombia?", ["Bogota"])
    assert is_correct("The opposite of hot is COLD!", 'Opposite of "hot"?', ["cold"])


def test_budget_threshold_escalates_at_most_the_budget():
    scores = np.linspace(0, 1, 101)
    threshold = threshold_for_budget(scores, np.ones(101), 0.3)
    assert 0.29 <= float(np.mean(scores < threshold)) <= 0.3


def test_quality_threshold_escalates_the_fewest_that_reach_the_target():
    scores = np.array([0.1, 0.2, 0.3, 0.9])
    quality = np.array([0.0, 0.5, 1.0, 1.0])  # mean 0.625
    threshold = threshold_for_quality(scores, quality, 0.75)  # escalating 0.1 gives 0.875
    assert float(np.mean(scores < threshold)) == 0.25


def test_logistic_head_learns_a_separable_rule(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(float)
    head = LogisticHead.fit(x, y, l2=0.1)
    head.save(tmp_path / "h.npz")
    loaded = LogisticHead.load(tmp_path / "h.npz")
    assert np.mean((loaded.predict(x) > 0.5) == y) > 0.95


def test_agreement_metrics():
    assert token_f1("The capital is Paris.", "Paris is the capital") == 1.0
    assert rouge_l("a b c d", "a c d") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert rouge_l("", "x") == 0.0


def request(temperature=0.0, seed=None):
    return RoutedRequest("id", [1, 2, 3], SamplingParams(max_tokens=8, temperature=temperature,
                                                         seed=seed), Deadline(None))


def test_only_deterministic_requests_are_cacheable():
    assert cache_key(request(), "edge", has_session=False)
    assert cache_key(request(), "edge", False) != cache_key(request(), "cloud", False)
    assert cache_key(request(), "edge", has_session=True) is None
    assert cache_key(request(temperature=0.7), "edge", False) is None
    assert cache_key(request(temperature=0.7, seed=3), "edge", False)


# -- router-added latency: the timed parts and the batched state operations -------------

def test_spent_accumulates_into_the_named_part():
    from tandem.router.latency import DECISION, STATE, added_ns, spent

    timings = common_pb2.Timings()
    for _ in range(2):
        with spent(timings, STATE):
            sum(range(1000))
    with spent(timings, DECISION):
        sum(range(1000))
    assert timings.state_ns > 0 and timings.decision_ns > 0 and timings.scoring_ns == 0
    assert added_ns(timings) == timings.state_ns + timings.decision_ns


def test_only_embedding_scorers_count_as_scoring():
    from tandem.router.latency import DECISION, SCORING, scorer_part
    from tandem.router.scorers import LearnedScorer, MeanProbabilityScorer

    assert scorer_part(MeanProbabilityScorer()) == DECISION
    # The part depends on the scorer's kind only (no encoder is loaded for this check).
    assert scorer_part(LearnedScorer.__new__(LearnedScorer)) == SCORING


def test_admission_is_all_or_nothing(make_store):
    """A request refused by the token budget does not spend the rate-limit token."""
    import asyncio
    import time

    from tandem.router.state import RATE_LIMIT, TOKEN_BUDGET, Limits

    tenant = f"adm{time.monotonic_ns()}"

    def limits(tokens):
        return Limits(tenant, rate_per_s=0.001, burst=2, tokens=tokens, budget=100,
                      window_s=60)

    async def scenario():
        store = make_store()
        results = [await store.admit(limits(n)) for n in (60, 60, 10, 10)]
        await store.close()
        return results

    first, over_budget, second, over_rate = asyncio.run(scenario())
    assert first.allowed and second.allowed
    assert not over_budget.allowed and over_budget.limit == TOKEN_BUDGET
    assert 0 < over_budget.retry_after_s <= 60
    assert not over_rate.allowed and over_rate.limit == RATE_LIMIT
    assert over_rate.retry_after_s > 1


def test_complete_writes_turns_refund_cache_and_stats(make_store):
    import asyncio
    import time

    from tandem.router.state import Completion, Limits

    tenant, policy = f"done{time.monotonic_ns()}", f"p{time.monotonic_ns()}"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

    async def scenario():
        store = make_store()
        await store.admit(Limits(tenant, tokens=60, budget=100, window_s=60))
        await store.complete(Completion(
            tenant, policy, {"requests": 1, "edge_tokens": 10}, session_id="s",
            turns=turns, session_ttl_s=60, refund_tokens=50, budget_window_s=60,
            cache_key="k", cache_value=b"answer", cache_ttl_s=60))
        # 10 of 100 tokens are spent after the refund: 90 more fit, 91 would not.
        fits = await store.admit(Limits(tenant, tokens=90, budget=100, window_s=60))
        got = (await store.history(tenant, "s"), await store.cache_get(tenant, "k"),
               await store.stats(policy), fits)
        await store.close()
        return got

    history, cached, stats, fits = asyncio.run(scenario())
    assert history == turns and cached == b"answer" and fits.allowed
    assert stats == {"requests": 1, "edge_tokens": 10}


def test_one_slow_verify_does_not_tilt_the_step_estimate():
    """Seen in a bench run: passes of 7 tokens (~26 ms), then one slow pass of 11 tokens
    (50 ms). Fitted freely, the line put a one-token pass at 4.5 ms, and the speed-up
    measured in those steps abandoned a request that was paying."""
    controller, request = DraftLengthController(6), RequestRounds()
    rng = np.random.default_rng(0)
    passes = [(7, 0.026 + 0.002 * rng.random()) for _ in range(8)] + [(11, 0.050), (7, 0.037)]
    for count, seconds in passes:
        controller.observe_draft(0.035, count - 1, request=request)
        controller.observe_verify(request, seconds + 0.02, seconds, count - 1, count - 1)
    a, b = controller.verify_cost.line()
    assert 0.019 < a + b < 0.03  # a one-token pass: ~22 ms, not 4.5
    assert not controller.should_abandon(request)


def test_speculative_ceiling_costs_rounds_of_k_drafts_and_a_verify():
    """`tandem bench ceiling`'s costing: free, always-right drafts of 4 turn ten
    cloud steps into two verify passes (5x); drafts that never match only add time."""
    from argparse import Namespace

    from tandem.router.bench import ceiling

    costs = Namespace(step_ms=20.0, verify_slope=0.0, cloud_prefill_ms=0.0)
    assert ceiling.speedup([[16] * 10], 4, 0.0, 0.0, costs, 0.0) == pytest.approx(5.0)
    assert ceiling.speedup([[0] * 10], 4, 0.0, 0.005, costs, 0.0) < 1.0


class Loads:
    """The two tiers' latest loads, as the policies read them."""

    def __init__(self, edge: common_pb2.TierLoad | None,
                 cloud: common_pb2.TierLoad | None) -> None:
        self.edge_load = lambda: edge
        self.cloud_load = lambda: cloud


def test_a_busy_edge_spills_only_to_a_cloud_whose_load_is_known() -> None:
    busy = common_pb2.TierLoad(queued=4, max_queued=4, estimated_wait_ms=5000)
    idle = common_pb2.TierLoad(max_queued=4)
    assert edge_too_busy(Loads(busy, idle), 1.0)  # type: ignore[arg-type]
    assert not edge_too_busy(Loads(idle, idle), 1.0)  # type: ignore[arg-type]
    # The cloud's load went unknown (down, or too busy to answer Load): the edge's queue
    # beats an error.
    assert not edge_too_busy(Loads(busy, None), 1.0)  # type: ignore[arg-type]


def test_apgr_is_undefined_where_the_cloud_is_no_better_than_the_edge():
    edge, cloud = np.array([1.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    costs = Costs(np.ones(3), np.ones(3), np.zeros(3), cloud)
    result = summarise(np.array([0.1, 0.2, 0.3]), edge, costs)
    assert result["apgr"] is None and result["passes"]["apgr"] is None
    assert result["cost_reduction_at_95"] == 1.0  # the edge alone already reaches it
    assert random_baseline(edge, costs)["apgr"] is None
