"""Assembling the cascade evaluation report from labelled answers.

Cost model of the forward-pass axis (stated in every report as ``cost_model``): the unit is
one batch-1 decode pass of the cloud (one token through the model: the weights streamed
once). A pass over n tokens at once (a prefill, the judge's pass over an answer) costs
max(1, n x PREFILL_TOKEN_COST) units. Cloud-only serving of a prompt costs its prefill plus
one pass per further generated token; a cloud-judged scorer pays one judge pass over
prompt and answer for every prompt, whether or not it escalates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tandem.router.embeddings import SentenceEncoder
from tandem.router.eval.cascade import Costs, plot, random_baseline, summarise
from tandem.router.eval.checkable import is_correct
from tandem.router.eval.collect import read_jsonl
from tandem.router.eval.judge import judge_scores
from tandem.router.eval.train import answers_of
from tandem.router.scorers import SCORERS, LearnedScorer, PromptRouter

# A prefill token in decode-pass units, measured on this machine by `tandem bench cloud`
# (fp32 SmolLM2-135M): a cold 1,048-token prefill took 2,738 ms against 74.5 ms per
# batch-1 decode step (13.42 tok/s), 2.61 / 74.5 = 0.035.
PREFILL_TOKEN_COST = 0.035


def costs_of(rows: list[dict[str, Any]], cloud_quality: np.ndarray,
             prefill_token_cost: float = PREFILL_TOKEN_COST) -> Costs:
    from tandem.shared.models import DEFAULT_MODEL, load_tokenizer, resolve_model
    from tandem.shared.prompting import chat_token_ids

    tokenizer = load_tokenizer(resolve_model(DEFAULT_MODEL))
    prompt = np.asarray([len(chat_token_ids(tokenizer, [{"role": "user", "content": r["prompt"]}]))
                         for r in rows], dtype=float)
    generated = np.maximum(np.asarray([r["cloud_tokens"] for r in rows], dtype=float), 1)
    answer = np.asarray([len(r.get("cloud_logprobs") or []) for r in rows], dtype=float)

    def passes(tokens: np.ndarray) -> np.ndarray:
        return np.maximum(1.0, tokens * prefill_token_cost)

    return Costs(tokens=generated, passes=passes(prompt) + generated - 1,
                 judge_passes=passes(prompt + answer), cloud_quality=cloud_quality)


def cost_model(prefill_token_cost: float) -> dict[str, Any]:
    return {"unit": "one batch-1 decode pass of the cloud",
            "prefill_token_cost": prefill_token_cost,
            "pass_over_n_tokens": "max(1, n x prefill_token_cost)",
            "cloud_only": "prefill pass over the prompt + one pass per further generated token",
            "escalation": "the prompt's cloud-only cost (the judge's KV is not counted as reused)",
            "judge": "one pass over prompt + edge answer, for every prompt (cloud_* scorers)",
            "speculative_cascade": "one pass per Verify or cloud decode step (a draft of k "
                                   "tokens costs under one unit), against cloud-only's one "
                                   "per generated token"}


def qualities(rows: list[dict[str, Any]], quality: str, bar: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edge quality, cloud quality, agreement with the cloud answer) per prompt. Quality is
    whether the answer is right (``correct``, checkable-answer sets), or 1 when the edge
    answer's agreement with the cloud's reaches ``bar`` (acceptable, as FrugalGPT and
    RouteLLM label answers; the cloud's own scores 1), or with bar 0 the agreement itself."""
    metric = "rouge_l" if quality == "correct" else quality
    agreement = np.asarray([r[metric] for r in rows], dtype=float)
    if quality == "correct":
        if not all("answers" in r for r in rows):
            raise ValueError("quality 'correct' needs prompts with accepted `answers` "
                             "(scripts/make_checkable_prompts.py)")
        graded = [(is_correct(r["edge_text"], r["prompt"], r["answers"]),
                   is_correct(r["cloud_text"], r["prompt"], r["answers"])) for r in rows]
        edge, cloud = (np.asarray(g, dtype=float) for g in zip(*graded))
        return edge, cloud, agreement
    edge = (agreement >= bar).astype(float) if bar > 0 else agreement
    return edge, np.ones_like(edge), agreement


def cascade_report(labels: Path, quality: str, bar: float, edge: str, plot_path: str | None,
                   headline: str = "mean_prob",
                   prefill_token_cost: float = PREFILL_TOKEN_COST) -> dict[str, Any]:
    """Every scorer's cost/quality on the labelled answers, both cost axes. With bar > 0
    (or a checkable set) the same routers are also judged by raw agreement."""
    rows = read_jsonl(labels)
    edge_quality, cloud_quality, agreement = qualities(rows, quality, bar)
    costs = costs_of(rows, cloud_quality, prefill_token_cost)
    answers = answers_of(rows)
    encoder = SentenceEncoder()
    scores = {name: cls().score_many(answers) for name, cls in SCORERS.items()
              if name != LearnedScorer.name and not getattr(cls, "needs_cloud", False)}
    scores[LearnedScorer.name] = LearnedScorer.load(encoder=encoder).score_many(answers)
    # The prompt router scores before generation (what `route` uses).
    scores["route"] = PromptRouter.load(encoder=encoder).predict_many([r["prompt"] for r in rows])
    judged: set[str] = set()
    if all("cloud_logprobs" in r for r in rows):  # the cloud judged each answer (judge.py)
        judged_scores = judge_scores(answers)
        scores |= judged_scores
        judged = set(judged_scores)
    report: dict[str, Any] = {
        "prompts": len(rows), "quality": quality, "bar": bar, "edge": edge,
        "edge_only_quality": round(float(edge_quality.mean()), 4),
        "cloud_only_quality": round(float(cloud_quality.mean()), 4),
        "edge_only_agreement": round(float(agreement.mean()), 4),
        "cost_model": cost_model(prefill_token_cost),
        "scorers": {name: summarise(s, edge_quality, costs, name in judged)
                    for name, s in scores.items()},
        "random": random_baseline(edge_quality, costs),
        # Knows each answer's quality: escalates first where the cloud gains the most.
        "oracle": summarise(edge_quality - cloud_quality, edge_quality, costs),
    }
    if bar > 0 or quality == "correct":  # the same routers judged by raw agreement
        by_agreement = Costs(costs.tokens, costs.passes, costs.judge_passes,
                             np.ones_like(agreement))
        report["by_agreement"] = {
            name: {k: v for k, v in summarise(s, agreement, by_agreement, name in judged).items()
                   if k != "curve"}
            for name, s in scores.items()} | {"random": random_baseline(agreement, by_agreement)}
    report["headline_scorer"] = headline
    report["apgr"] = report["scorers"][headline]["apgr"]
    report["cost_reduction_at_95"] = report["scorers"][headline]["cost_reduction_at_95"]
    report["random_apgr"] = report["random"]["apgr"]
    report["random_cost_reduction_at_95"] = report["random"]["cost_reduction_at_95"]
    # The share of the random-to-oracle APGR gap the best scorer closes (None where the
    # cloud is no better than the edge, so that there is no gap).
    report["best_scorer"] = report["gap_closed"] = None
    if report["random_apgr"] is not None:
        gap = report["oracle"]["apgr"] - report["random_apgr"]
        best = max(report["scorers"], key=lambda n: report["scorers"][n]["apgr"])
        report["best_scorer"] = best
        report["gap_closed"] = (round((report["scorers"][best]["apgr"] - report["random_apgr"])
                                      / gap, 4) if gap > 1e-9 else None)
    if plot_path:
        plot(report, plot_path)
        report["plot"] = plot_path
    return report
