"""Load-test building blocks without a stack: workloads (mixes, budget, Poisson pacing,
seeds), the summary's metric definitions, and the locust command line."""

from __future__ import annotations

import json
import random
import statistics
from types import SimpleNamespace

import pytest

from tandem.loadtests.report import parse_slos, summarize, tpot_s
from tandem.loadtests.run import LoadTest, counter_deltas, locust_command
from tandem.loadtests.records import RequestRecord
from tandem.loadtests.workload import (Pacer, PromptPicker, RequestBudget, Workload,
                                       load_prompt_set, parse_weights)


def record(code="OK", ttft=0.1, e2el=1.0, tiers=None, **fields):
    return RequestRecord(target="router", user="RouterUser", policy="", code=code,
                         ttft_s=ttft if code == "OK" else None, e2el_s=e2el,
                         tokens_by_tier=tiers if tiers is not None else {"edge": 10},
                         start_unix=fields.pop("start", 100.0), **fields)


def test_builtin_prompt_sets_have_every_mix_tag_and_chats_share_a_prefix():
    mixed = load_prompt_set("mixed")
    assert {"easy", "hard", "short", "long"} <= mixed.tags()
    chats = load_prompt_set("chats").chats
    assert len(chats) >= 2 and all(len(c.turns) >= 2 for c in chats)
    assert len({c.system for c in chats}) == 1 and chats[0].system


def test_prompt_file_lines_are_validated(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "tags": ["easy"], "max_tokens": 5}) + "\n\n"
                    + json.dumps({"text": "no prompt field"}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:3"):
        load_prompt_set(str(path))
    path.write_text(json.dumps({"prompt": "Hi", "tags": ["easy"], "max_tokens": 5}) + "\n")
    assert load_prompt_set(str(path)).prompts[0].max_tokens == 5


def test_weights_parse_and_reject_nonsense():
    assert parse_weights("edge") == {"edge": 1.0}
    assert parse_weights("easy=3, hard=1") == {"easy": 3.0, "hard": 1.0}
    for bad in ("", "a=0", "a=-1", "a=nan"):
        with pytest.raises(ValueError):
            parse_weights(bad)


def test_mix_draws_tags_by_weight_and_is_reproducible_by_seed():
    prompts = load_prompt_set("mixed").prompts
    picker = PromptPicker(prompts, {"easy": 3, "hard": 1})
    draws = [picker.pick(random.Random(f"7:{i}")) for i in range(2000)]
    easy = sum("easy" in p.tags for p in draws) / len(draws)
    assert 0.70 < easy < 0.80
    again = [picker.pick(random.Random(f"7:{i}")) for i in range(2000)]
    assert draws == again
    with pytest.raises(ValueError, match="match no prompt"):
        PromptPicker(prompts, {"medium": 1})


def test_budget_hands_out_exactly_the_total_and_flags_the_last():
    budget = RequestBudget(3)
    assert [budget.take() for _ in range(5)] == [True, True, True, False, False]
    assert [budget.finish() for _ in range(3)] == [False, False, True]
    assert RequestBudget(None).take() and not RequestBudget(None).finish()


def test_constant_concurrency_never_waits():
    pacer = Pacer(None, users=4, rng=random.Random(0))
    assert [pacer.wait_seconds() for _ in range(3)] == [0.0, 0.0, 0.0]


def test_poisson_pacing_keeps_its_schedule_with_exponential_gaps():
    # 4 users sharing 2 req/s: each user's gaps are exponential with mean 2 s.
    pacer = Pacer(2.0, users=4, rng=random.Random(1))
    starts, now = [], 0.0
    for _ in range(4000):
        now += pacer.wait_seconds(now)
        starts.append(now)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert statistics.mean(gaps) == pytest.approx(2.0, rel=0.06)
    assert statistics.stdev(gaps) == pytest.approx(2.0, rel=0.1)  # exponential: sd == mean
    # A slow answer does not push back later arrivals: the schedule is kept.
    late = Pacer(1.0, users=1, rng=random.Random(2))
    first = late.wait_seconds(0.0)
    second = late.wait_seconds(first + 100.0)  # the request took 100 s
    assert second == 0.0 and late.next_start < first + 100.0


def test_workload_from_options_applies_policies_per_user_class():
    options = SimpleNamespace(
        tandem_target="router", tandem_prompts="mixed", tandem_chats="chats",
        tandem_mix="hard=1", tandem_policy="edge=1,cloud=1", tandem_chat_policy="speculative",
        tandem_max_tokens=16, tandem_temperature=None, tandem_timeout=30.0, tandem_seed=3,
        num_users=2, tandem_request_rate=0.0, tandem_requests=10)
    w = Workload.from_options(options)
    assert w.policies == {"edge": 1.0, "cloud": 1.0} and w.chat_policies == {"speculative": 1.0}
    assert w.budget.total == 10 and w.request_rate is None and w.prompts.chats
    assert all("hard" in w.picker.pick(w.user_rng(1)).tags for _ in range(20))
    assert w.user_rng(1).random() == w.user_rng(1).random() != w.user_rng(2).random()


def test_tpot_excludes_the_first_token():
    r = record(ttft=0.5, e2el=2.5, tiers={"cloud": 5})
    assert tpot_s(r) == pytest.approx(0.5)  # (2.5 - 0.5) / (5 - 1)
    assert tpot_s(record(tiers={"cloud": 1})) is None


def test_summary_counts_rejected_apart_and_follows_vllm_definitions():
    records = [
        record(ttft=0.1, e2el=1.1, tiers={"edge": 11}, start=100.0, itl_s=[0.1] * 10,
               resolved_policy="cascade"),
        record(ttft=1.0, e2el=3.0, tiers={"cloud": 5}, start=101.0, itl_s=[0.5] * 4,
               resolved_policy="cascade", escalated=True),
        record(ttft=0.2, e2el=1.2, tiers={"edge": 6, "cloud": 2}, start=102.0, itl_s=[0.2] * 2,
               resolved_policy="speculative", draft_tokens=8, accepted_draft_tokens=6,
               cloud_forward_passes=3),
        record(ttft=0.2, e2el=1.0, tiers={"edge": 3, "cloud": 1}, start=102.5,
               resolved_policy="auto", escalated=True, accepted_draft_tokens=3,
               cloud_forward_passes=1),
        record(code="RESOURCE_EXHAUSTED", e2el=0.01, tiers={}, start=103.0),
        record(code="UNAVAILABLE", e2el=0.01, tiers={}, start=104.0),
    ]
    s = summarize(records, parse_slos(["ttft:500", "e2el:2000"]))
    assert (s["completed"], s["failed"], s["rejected"]) == (4, 1, 1)
    assert s["failures_by_code"] == {"UNAVAILABLE": 1}
    assert s["duration_s"] == pytest.approx(104.01 - 100.0)
    assert s["total_output_tokens"] == 28
    assert s["output_throughput"] == pytest.approx(28 / 4.01, abs=1e-3)
    assert s["request_throughput"] == pytest.approx(4 / 4.01, abs=1e-3)
    assert s["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert s["e2el_ms"]["mean"] == pytest.approx(1575.0, abs=1e-2)
    assert s["tpot_ms"]["mean"] == pytest.approx((100 + 500 + 1000 / 7 + 800 / 3) / 4, abs=1e-2)
    assert s["itl_ms"]["mean"] == pytest.approx(1000 * (1.0 + 2.0 + 0.4) / 16, abs=1e-2)
    assert s["router_time_ms"] == {"edge": 0.0, "cloud": 0.0, "overhead": 0.0}
    assert s["goodput"]["good_requests"] == 3  # the slow escalated one misses both SLOs
    share = s["tier_share"]
    assert share["request_counts"] == {"edge": 1, "cloud": 1, "both": 2, "none": 0}
    assert share["token_counts"] == {"edge": 20, "cloud": 8}
    assert s["escalation"]["escalated"] == 2 and s["escalation"]["rate"] == 0.5
    assert s["escalation"]["by_policy"]["cascade"] == {"requests": 2, "escalated": 1}
    assert s["escalation"]["by_policy"]["auto"] == {"requests": 1, "escalated": 1}
    spec = s["speculative"]
    assert (spec["requests"], spec["draft_tokens"], spec["accepted_tokens"]) == (1, 8, 9)
    assert spec["acceptance_rate"] == 0.75  # over the request that drafted only
    assert spec["cloud_passes_per_token"] == pytest.approx(3 / 8)
    assert spec["accepted_without_drafts"] == {"requests": 1, "tokens": 3}


def test_slos_are_validated():
    assert parse_slos(["tpot:100"]) == {"tpot": 100.0}
    for bad in (["itl:5"], ["ttft:abc"], ["ttft:0"]):
        with pytest.raises(ValueError):
            parse_slos(bad)


def test_locust_command_carries_the_workload(tmp_path):
    test = LoadTest(target="router", address="h:1", users=3, requests=9, policy="edge=1",
                    chat_users=1, chats="chats", request_rate=2.0, seed=5)
    cmd = locust_command(test, tmp_path)
    joined = " ".join(cmd)
    for part in ("-u 3", "-H h:1", "--tandem-requests 9", "--tandem-policy edge=1",
                 "--tandem-request-rate 2.0", "--tandem-seed 5", "--tandem-chats chats"):
        assert part in joined
    assert cmd[-2:] == ["RouterUser", "RouterChatUser"] and "--run-time" not in cmd
    only_chats = LoadTest(target="router", address="h:1", users=2, duration_s=30, chat_users=2)
    cmd = locust_command(only_chats, tmp_path)
    assert cmd[-1] == "RouterChatUser" and "RouterUser" not in cmd and "--run-time" in cmd
    with pytest.raises(ValueError):
        LoadTest(target="router", address="h:1", users=1, requests=5, duration_s=10)
    with pytest.raises(ValueError):
        LoadTest(target="cloud", address="h:1", users=1, requests=5, chat_users=1)


def test_counter_deltas_keep_changed_counters_only():
    before = {'a_total{x="1"}': 2.0, 'b_total{}': 1.0, 'h_bucket{le="1"}': 3.0}
    after = {'a_total{x="1"}': 5.0, 'b_total{}': 1.0, 'c_total{}': 4.0, 'h_bucket{le="1"}': 9.0}
    assert counter_deltas(before, after) == {'a_total{x="1"}': 3.0, 'c_total{}': 4.0}


def _level(users, tok_s, e2el_ms):
    dist = {"mean": e2el_ms, "p50": e2el_ms, "p99": e2el_ms * 2}
    return {"config": {"users": users, "target": "router", "policy": "default", "max_tokens": 16},
            "completed": 8, "failed": 0, "rejected": 0, "request_throughput": tok_s / 16,
            "output_throughput": tok_s, "ttft_ms": dist, "tpot_ms": dist, "e2el_ms": dist,
            "server": {"cpu_cores_busy": {"cloud": 0.5, "edge": 1.0}}}


def test_sweep_finds_saturation_and_draws_the_curves(tmp_path):
    from tandem.loadtests.sweep import format_sweep, plot_sweep, saturation

    levels = [_level(1, 20.0, 800.0), _level(4, 60.0, 1000.0), _level(16, 63.0, 4000.0),
              _level(32, 62.0, 8000.0)]
    report = {"levels": levels, "saturation": saturation(levels)}
    assert report["saturation"]["users"] == 4 and report["saturation"]["next_users"] == 16
    table = format_sweep(report)
    assert table.count("\n") == 6 and "cpu edge" in table and "saturates at 4 users" in table
    png = tmp_path / "sweep.png"
    plot_sweep(report, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert saturation(levels[:2])["users"] is None


@pytest.mark.parametrize("flags", [["--plot", "x.png"], ["--sweep", "1,a"], ["--metrics", "bad"],
                                   ["--goodput", "itl:3"], ["--users", "0"],
                                   ["--target", "cloud", "--chat-users", "1"]])
def test_cli_rejects_bad_flags_before_running_anything(flags, capsys):
    from tandem.shared.cli.main import main

    assert main(["loadtest", *flags]) == 2
    assert capsys.readouterr().err.startswith("tandem loadtest: ")
