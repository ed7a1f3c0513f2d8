"""The summary JSON of a load test, from the per-request records.

Serving metrics follow vLLM's serving benchmark (benchmarks/benchmark_serving.py):
- duration: first request start to last request end (seconds);
- request_throughput = completed / duration; output_throughput = output tokens of
  completed requests / duration;
- ttft: time to the first chunk with output; tpot: (e2el - ttft) / (output_tokens - 1),
  i.e. excluding the first token, for requests with more than one token; itl: every gap
  between consecutive output chunks of every request; e2el: request start to last byte;
- goodput: completed requests per second that meet every configured SLO (ms).
Tandem's own: tier_share (requests answered by edge only / cloud only / both, and output
tokens per tier), escalation (escalated / completed requests, and per policy),
speculative acceptance (accepted / drafted tokens and cloud forward passes per output
token, over requests that drafted; totals over all) and `cached` (answers from the router's response
cache, which did no model work).
Only OK requests enter latency and token figures; RESOURCE_EXHAUSTED is `rejected`,
every other status is `failed`, both counted by code.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tandem.loadtests.records import REJECTED_CODE, RequestRecord

# SLO keys accepted by --goodput (milliseconds), as in vLLM.
SLO_METRICS = ("ttft", "tpot", "e2el")
TIERS = ("edge", "cloud")


def load_records(path: str | Path) -> list[RequestRecord]:
    lines = Path(path).read_text().splitlines() if Path(path).exists() else []
    return [RequestRecord.from_json(json.loads(line)) for line in lines if line.strip()]


def parse_slos(items: Iterable[str]) -> dict[str, float]:
    """['ttft:500', 'tpot:100'] -> {'ttft': 500.0, 'tpot': 100.0} (milliseconds)."""
    slos: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition(":")
        if name not in SLO_METRICS:
            raise ValueError(f"goodput SLO {item!r}: metric must be one of {SLO_METRICS}")
        try:
            slos[name] = float(value)
        except ValueError:
            raise ValueError(f"goodput SLO {item!r}: need NAME:MILLISECONDS") from None
        if not slos[name] > 0:
            raise ValueError(f"goodput SLO {item!r}: milliseconds must be > 0")
    return slos


def distribution_ms(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"mean": None, "p50": None, "p99": None}
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {"mean": round(float(ms.mean()), 3), "p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3)}


def tpot_s(record: RequestRecord) -> float | None:
    if record.output_tokens < 2 or record.ttft_s is None:
        return None
    return (record.e2el_s - record.ttft_s) / (record.output_tokens - 1)


def meets_slos(record: RequestRecord, slos: dict[str, float]) -> bool:
    values = {"ttft": record.ttft_s, "tpot": tpot_s(record) or 0.0, "e2el": record.e2el_s}
    return all(values[k] is not None and values[k] * 1000.0 <= limit  # type: ignore[operator]
               for k, limit in slos.items())


def _rate(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def tier_share(ok: list[RequestRecord]) -> dict[str, Any]:
    answered_by = Counter("both" if len([t for t in r.tokens_by_tier if r.tokens_by_tier[t]]) > 1
                          else next((t for t, n in r.tokens_by_tier.items() if n), "none")
                          for r in ok)
    tokens = {tier: sum(r.tokens_by_tier.get(tier, 0) for r in ok) for tier in TIERS}
    total_tokens = sum(tokens.values())
    return {
        "requests": {k: _rate(answered_by.get(k, 0), len(ok)) for k in (*TIERS, "both")},
        "request_counts": {k: answered_by.get(k, 0) for k in (*TIERS, "both", "none")},
        "tokens": {tier: _rate(n, total_tokens) for tier, n in tokens.items()},
        "token_counts": tokens,
    }


def escalation(ok: list[RequestRecord]) -> dict[str, Any]:
    """Escalated requests over all completed ones, and per resolved policy (cascade and
    auto escalate; edge, cloud and speculative never do)."""
    by_policy: dict[str, dict[str, int]] = {}
    for r in ok:
        row = by_policy.setdefault(r.resolved_policy or r.policy, {"requests": 0, "escalated": 0})
        row["requests"] += 1
        row["escalated"] += r.escalated
    escalated = sum(r.escalated for r in ok)
    return {"escalated": escalated, "rate": _rate(escalated, len(ok)), "by_policy": by_policy}


def speculative(ok: list[RequestRecord]) -> dict[str, Any]:
    """Draft and accepted token totals over every request (they equal the router's
    tandem_router_spec_*_tokens_total counters); vLLM's acceptance rate (accepted / draft
    tokens) and cloud forward passes per output token over the requests that drafted.
    Requests that report accepted tokens without drafts (an escalation that had the cloud
    verify the edge's answer) are counted apart, as they have no draft count to divide by."""
    drafted = [r for r in ok if r.draft_tokens]
    undrafted = [r for r in ok if r.accepted_draft_tokens and not r.draft_tokens]
    out_tokens = sum(r.output_tokens for r in drafted)
    return {"requests": len(drafted),
            "draft_tokens": sum(r.draft_tokens for r in ok),
            "accepted_tokens": sum(r.accepted_draft_tokens for r in ok),
            "acceptance_rate": _rate(sum(r.accepted_draft_tokens for r in drafted),
                                     sum(r.draft_tokens for r in drafted)),
            "cloud_passes_per_token": _rate(sum(r.cloud_forward_passes for r in drafted),
                                            out_tokens),
            "accepted_without_drafts": {"requests": len(undrafted),
                                        "tokens": sum(r.accepted_draft_tokens for r in undrafted)}}


def summarize(records: list[RequestRecord], slos: dict[str, float] | None = None,
              ) -> dict[str, Any]:
    """The summary JSON (see the module docstring for every definition)."""
    slos = slos or {}
    ok = [r for r in records if r.code == "OK"]
    rejected = [r for r in records if r.code == REJECTED_CODE]
    failed = [r for r in records if r.code not in ("OK", REJECTED_CODE)]
    duration = (max(r.start_unix + r.e2el_s for r in records) - min(r.start_unix for r in records)
                if records else 0.0)
    output_tokens = sum(r.output_tokens for r in ok)
    good = sum(meets_slos(r, slos) for r in ok) if slos else len(ok)
    return {
        "completed": len(ok),
        "failed": len(failed),
        "rejected": len(rejected),
        "failures_by_code": dict(Counter(r.code for r in failed)),
        "duration_s": round(duration, 3),
        "total_input_tokens": sum(r.prompt_tokens for r in ok),
        "total_output_tokens": output_tokens,
        "request_throughput": _rate(len(ok), duration),
        "output_throughput": _rate(output_tokens, duration),
        "ttft_ms": distribution_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        "tpot_ms": distribution_ms([t for r in ok if (t := tpot_s(r)) is not None]),
        "itl_ms": distribution_ms([gap for r in ok for gap in r.itl_s]),
        "e2el_ms": distribution_ms([r.e2el_s for r in ok]),
        "goodput": {"slos_ms": slos, "good_requests": good,
                    "request_goodput": _rate(good, duration)},
        "tier_share": tier_share(ok),
        # Where the router says a request's time went (mean ms; router target only).
        "router_time_ms": {k: round(1000 * float(np.mean([getattr(r, f"{k}_s") for r in ok])), 3)
                           if ok else None for k in ("edge", "cloud", "overhead")},
        "escalation": escalation(ok),
        "speculative": speculative(ok),
        "by_policy": dict(Counter(r.resolved_policy or r.policy for r in ok)),
        "cached": sum(r.cached for r in ok),
    }


def format_table(summary: dict[str, Any]) -> str:
    """A few readable lines of the summary, for stderr."""
    def dist(key: str) -> str:
        d = summary[key]
        return "-" if d["mean"] is None else f"{d['mean']:.0f}/{d['p50']:.0f}/{d['p99']:.0f}"

    share = summary["tier_share"]["tokens"]
    return "\n".join([
        f"completed {summary['completed']}  failed {summary['failed']}  "
        f"rejected {summary['rejected']}  in {summary['duration_s']:.1f} s",
        f"throughput {summary['request_throughput']} req/s, {summary['output_throughput']} tok/s;"
        f"  goodput {summary['goodput']['request_goodput']} req/s",
        f"ms mean/p50/p99: ttft {dist('ttft_ms')}  tpot {dist('tpot_ms')}  itl {dist('itl_ms')}  "
        f"e2el {dist('e2el_ms')}",
        f"tokens by tier: edge {share['edge']}  cloud {share['cloud']}",
    ])
