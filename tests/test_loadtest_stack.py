"""`tandem loadtest` against the real SmolLM2 stack: the summary's counts agree with the
services' own Prometheus counters, errors are counted by code, and chat users carry
their sessions. Runs are tiny (a few requests, a few tokens) to keep CI short."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.real_model


def counters(stack, service):
    """{(name, sorted labels): value} of a service's _total counters, read independently of
    the load-test code."""
    port = stack[service].metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.endswith("_total")}


def delta(before, after, name, **labels):
    """Sum of a counter's change over the samples whose labels include ``labels``."""
    keys = {k for k in after if k[0] == name and set(labels.items()) <= set(k[1])}
    return sum(after[k] - before.get(k, 0.0) for k in keys)


def loadtest(tmp_path, address, *flags):
    cmd = [sys.executable, "-m", "tandem.shared.cli.main", "loadtest", "--address", address,
           "--output-dir", str(tmp_path), "--json", *flags]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_router_summary_agrees_with_router_counters(real_stack, tmp_path):
    before = counters(real_stack, "router")
    code, s = loadtest(tmp_path, real_stack["router"].address, "--users", "2", "--requests", "6",
                       "--max-tokens", "6", "--policy", "edge=1,cloud=1,cascade=1,speculative=1",
                       "--seed", "11", "--goodput", "e2el:600000")
    after = counters(real_stack, "router")
    assert code == 0 and (s["completed"], s["failed"], s["rejected"]) == (6, 0, 0)
    assert delta(before, after, "tandem_router_requests_total", code="OK") == 6
    for policy, n in s["by_policy"].items():
        assert delta(before, after, "tandem_router_requests_total", code="OK", policy=policy) == n
    tokens = s["tier_share"]["token_counts"]
    assert delta(before, after, "tandem_router_output_tokens_total", tier="TIER_EDGE") == tokens["edge"]
    assert delta(before, after, "tandem_router_output_tokens_total", tier="TIER_CLOUD") == tokens["cloud"]
    assert tokens["edge"] + tokens["cloud"] == s["total_output_tokens"] > 0
    assert delta(before, after, "tandem_router_escalations_total") == s["escalation"]["escalated"]
    assert delta(before, after, "tandem_router_spec_draft_tokens_total") == \
        s["speculative"]["draft_tokens"]
    assert delta(before, after, "tandem_router_spec_accepted_tokens_total") == \
        s["speculative"]["accepted_tokens"]
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        assert 0 < s[key]["p50"] <= s[key]["p99"]
    assert s["goodput"]["good_requests"] == 6 and s["output_throughput"] > 0
    assert s["router_time_ms"]["edge"] > 0 and s["router_time_ms"]["overhead"] >= 0
    # locust's own files: one CSV row per policy, and the HTML report.
    stats = (tmp_path / "locust_stats.csv").read_text()
    assert "Aggregated,6,0" in stats
    assert (tmp_path / "locust.html").stat().st_size > 0


def test_cloud_summary_agrees_with_cloud_counters(real_stack, tmp_path):
    before = counters(real_stack, "cloud")
    code, s = loadtest(tmp_path, real_stack["cloud"].address, "--target", "cloud", "--users", "2",
                       "--requests", "3", "--max-tokens", "5")
    after = counters(real_stack, "cloud")
    assert code == 0 and s["completed"] == 3 and s["failed"] == 0
    assert delta(before, after, "tandem_cloud_requests_total", method="GenerateStream") == 3
    assert delta(before, after, "tandem_cloud_generated_tokens_total", method="GenerateStream") == \
        s["total_output_tokens"] == s["tier_share"]["token_counts"]["cloud"]


def test_errors_are_failures_by_code_and_the_exit_code_says_so(real_stack, tmp_path):
    code, s = loadtest(tmp_path, real_stack["router"].address, "--users", "2", "--requests", "4",
                       "--max-tokens", "100000")
    assert code == 1
    assert (s["completed"], s["failed"], s["rejected"]) == (0, 4, 0)
    assert s["failures_by_code"] == {"INVALID_ARGUMENT": 4}
    assert "INVALID_ARGUMENT" in (tmp_path / "locust_failures.csv").read_text()


def test_chat_users_continue_their_sessions(real_stack, tmp_path):
    code, s = loadtest(tmp_path, real_stack["router"].address, "--users", "1", "--requests", "3",
                       "--max-tokens", "4", "--chat-users", "1", "--chat-policy", "edge",
                       "--policy", "edge")
    assert code == 0 and s["completed"] == 3
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    chat = [r for r in records if r["session"]]
    by_turn = {t: r["prompt_tokens"] for r in chat for t in r["tags"] if t.startswith("turn")}
    # Later turns of one chat see the shared system prompt plus the earlier turns.
    for turn in range(2, max((int(t[4:]) for t in by_turn), default=1) + 1):
        assert by_turn[f"turn{turn}"] > by_turn[f"turn{turn - 1}"]
