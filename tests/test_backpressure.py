"""Admission on predicted completion times (shared/backpressure.py), without a model."""

import pytest
from prometheus_client import CollectorRegistry

from tandem.shared.backpressure import (HEADROOM, Backpressure, StepTimes, Work, fair_place,
                                        timeline)
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import ResourceExhausted


def steps_of(fixed: float, per_token: float, sizes=range(1, 9)) -> StepTimes:
    steps = StepTimes()
    for _ in range(5):
        for n in sizes:
            steps.record(n, fixed + per_token * n)
    return steps


def tier(capacity: int = 2, max_waiting: int = 4, fixed: float = 1.0,
         per_token: float = 0.0) -> Backpressure:
    backpressure = Backpressure("test", capacity, max_waiting, CollectorRegistry())
    backpressure.steps = steps_of(fixed, per_token)
    return backpressure


def test_step_times_fit_the_line_of_the_measured_steps() -> None:
    fixed, per_token = steps_of(0.010, 0.002).line()
    assert fixed == pytest.approx(0.010) and per_token == pytest.approx(0.002)


def test_one_step_size_assumes_each_token_adds_a_share_of_the_step() -> None:
    steps = steps_of(0.1, 0.0, sizes=[1])
    assert steps.seconds(1) == pytest.approx(0.1)
    assert 0.1 < steps.seconds(5) <= 0.5  # slower, never more than proportional


def test_the_timeline_seats_the_waiting_as_places_free() -> None:
    steps = steps_of(1.0, 0.0)  # one second a step, whatever the batch
    starts, ends = timeline([Work(0, 3), Work(0, 5)], [Work(0, 2), Work(0, 1)], 2, steps)
    assert ends[:2] == pytest.approx([3, 5])
    assert starts[2:] == pytest.approx([3, 5])  # each takes the next place that frees
    assert ends[2:] == pytest.approx([5, 6])


def test_a_request_that_would_miss_its_deadline_is_refused_with_retry_after() -> None:
    backpressure = tier(fixed=1.0)
    running = [Work(0, 3, Deadline(60)), Work(0, 3, Deadline(60))]
    with pytest.raises(ResourceExhausted, match="estimated wait") as refused:
        backpressure.admit(Work(0, 4, Deadline(5)), running, [])
    assert refused.value.retry_after_s == pytest.approx(3, rel=0.05)  # when a place frees
    backpressure.admit(Work(0, 4, Deadline(60)), running, [])  # a longer deadline fits


def test_a_request_that_would_make_an_admitted_one_miss_its_deadline_is_refused() -> None:
    backpressure = tier(capacity=4, fixed=0.1, per_token=0.1)  # each sequence slows the step
    admitted = [Work(0, 10, Deadline(3.9 / HEADROOM))]  # 10 steps of 0.2 s: 2 s, within 3.9 s
    backpressure.admit(Work(0, 10, Deadline(60)), admitted, [])  # 10 x 0.3 s = 3 s: fits
    crowded = admitted + [Work(0, 10, Deadline(60))]
    with pytest.raises(ResourceExhausted, match="miss its deadline"):
        backpressure.admit(Work(0, 10, Deadline(60)), crowded, [])  # 10 x 0.4 s = 4 s > 3.9 s


def test_requests_that_took_longer_than_predicted_make_admission_stricter() -> None:
    """What the tier's own steps cannot see (the other tier on the same cores) slowed its
    admitted requests: later predictions are scaled by the recent took / predicted."""
    backpressure = tier(fixed=1.0)
    running = [Work(0, 3, Deadline(60))]
    backpressure.admit(Work(0, 4, Deadline(9)), running, [])  # 4 s, within 0.5 x 9 s
    for _ in range(10):
        backpressure.ended(predicted_s=2.0, took_s=6.0)  # 3x slower than predicted
    assert 2.5 < backpressure.slowdown <= 3.0
    with pytest.raises(ResourceExhausted, match="estimated wait"):
        backpressure.admit(Work(0, 4, Deadline(9)), running, [])
    backpressure.admit(Work(0, 4, Deadline(30)), running, [])  # 3 x 4 s within 0.5 x 30 s
    for _ in range(30):
        backpressure.ended(predicted_s=2.0, took_s=1.0)  # faster than predicted
    assert backpressure.slowdown == 1.0  # never more lenient than HEADROOM alone
    backpressure.admit(Work(0, 4, Deadline(9)), running, [])
    backpressure.ended(predicted_s=2.0, took_s=1.0, finished=False)  # its caller left early
    assert backpressure.slowdown == 1.0
    for _ in range(10):  # cut short by their deadline long after their predicted end
        backpressure.ended(predicted_s=2.0, took_s=8.0, finished=False)
    assert backpressure.slowdown > 3.0


def test_a_full_queue_refuses_and_a_draft_goes_before_the_waiting() -> None:
    backpressure = tier(capacity=1, max_waiting=1, fixed=1.0)
    running, waiting = [Work(0, 1)], [Work(0, 5, Deadline(6.4 / HEADROOM))]  # ends at 6 s
    with pytest.raises(ResourceExhausted, match="queue is full"):
        backpressure.admit(Work(0, 1), running, waiting)
    backpressure.max_waiting = 2
    backpressure.admit(Work(0, 1), running, waiting)  # after it: no harm
    with pytest.raises(ResourceExhausted, match="miss its deadline"):  # before it: 7 s > 6.4 s
        backpressure.admit(Work(0, 1), running, waiting, place=0)


def test_a_newcomer_waits_behind_each_tenants_first_requests_not_a_floods_backlog() -> None:
    running = ["mallory", "mallory"]
    waiting = ["alice", "mallory", "mallory", "mallory"]
    assert fair_place("bob", running, waiting) == 1  # behind alice's 1st, before mallory's 3rd
    assert fair_place("alice", running, waiting) == 1  # her 2nd: behind her 1st
    assert fair_place("mallory", running, waiting) == 4  # a tenant's own order is kept
    assert fair_place("bob", [], []) == 0


def test_a_flooding_tenants_requests_are_not_protected_from_another_tenants_first() -> None:
    backpressure = tier(capacity=8, fixed=0.1, per_token=0.1)
    # Three of mallory's, each ending just within its deadline: 10 steps of 0.4 s.
    flood = [Work(0, 10, Deadline(4.1 / HEADROOM), "mallory") for _ in range(3)]
    with pytest.raises(ResourceExhausted, match="miss its deadline"):  # her 4th: refused
        backpressure.admit(Work(0, 10, Deadline(60), "mallory"), flood, [])
    backpressure.admit(Work(0, 10, Deadline(60), "bob"), flood, [])  # bob's 1st: admitted
    shared = [Work(0, 10, Deadline(4.1 / HEADROOM), "alice"), *flood[:2]]
    with pytest.raises(ResourceExhausted, match="miss its deadline"):  # alice holds 1: kept
        backpressure.admit(Work(0, 10, Deadline(60), "bob"), shared, [])


def test_an_idle_or_unmeasured_tier_admits_anything_it_has_room_for() -> None:
    tier(fixed=10.0).admit(Work(0, 1000, Deadline(0.1)), [], [])
    unmeasured = Backpressure("test", 2, 2, CollectorRegistry())
    assert unmeasured.admit(Work(0, 1000, Deadline(0.1)), [Work(0, 1000)], []) is None


def test_expected_output_follows_the_recent_answers_below_max_tokens() -> None:
    backpressure = tier()
    assert backpressure.generation(0, 256, 512, 0, None).steps == 512  # nothing seen yet
    backpressure.generated(20, 512)
    assert backpressure.generation(0, 256, 512, 0, None).steps == 30  # 1.5 x the mean
    assert backpressure.generation(0, 256, 16, 0, None).steps == 16  # max_tokens bounds it
    assert backpressure.generation(0, 256, 512, 40, None).steps == 8  # past it: a quarter more
    assert backpressure.generation(300, 256, 512, 0, None).steps == 2 + 30  # prompt chunks
    for _ in range(50):  # answers cut at a small max_tokens: only "at least 2 tokens"
        backpressure.generated(2, 2)
    assert backpressure.mean_output == 20
    backpressure.generated(64, 64)  # cut at its limit, but longer than the mean: counts
    assert backpressure.mean_output > 20
