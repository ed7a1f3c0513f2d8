"""Assembling the cascade evaluation report from labelled answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tandem.router.embeddings import SentenceEncoder
from tandem.router.eval.cascade import plot, random_baseline, summarise
from tandem.router.eval.collect import read_jsonl
from tandem.router.eval.judge import judge_scores
from tandem.router.eval.train import answers_of
from tandem.router.scorers import SCORERS, LearnedScorer, PromptRouter


def cascade_report(labels: Path, quality: str, bar: float, edge: str, plot_path: str | None,
                   headline: str = "mean_prob") -> dict[str, Any]:
    """Quality of an edge answer: 1 when its agreement with the cloud answer reaches
    ``bar`` (acceptable, as FrugalGPT and RouteLLM label answers), else 0; with bar 0,
    the agreement itself. Both curves are reported; the headline uses ``bar``."""
    rows = read_jsonl(labels)
    agreement = np.asarray([r[quality] for r in rows], dtype=float)
    edge_quality = (agreement >= bar).astype(float) if bar > 0 else agreement
    cloud_tokens = np.maximum(np.asarray([r["cloud_tokens"] for r in rows]), 1)
    answers = answers_of(rows)
    encoder = SentenceEncoder()
    scores = {name: cls().score_many(answers) for name, cls in SCORERS.items()
              if name != LearnedScorer.name and not getattr(cls, "needs_cloud", False)}
    scores[LearnedScorer.name] = LearnedScorer.load(encoder=encoder).score_many(answers)
    # The prompt router scores before generation (what `route` uses).
    scores["route"] = PromptRouter.load(encoder=encoder).predict_many([r["prompt"] for r in rows])
    if all("cloud_logprobs" in r for r in rows):  # the cloud judged each answer (judge.py)
        scores |= judge_scores(rows, (agreement >= (bar or 0.5)).astype(float))
    report: dict[str, Any] = {
        "prompts": len(rows), "quality": quality, "bar": bar, "edge": edge,
        "edge_only_quality": round(float(edge_quality.mean()), 4),
        "edge_only_agreement": round(float(agreement.mean()), 4),
        "scorers": {name: summarise(s, edge_quality, cloud_tokens) for name, s in scores.items()},
        "random": random_baseline(edge_quality, cloud_tokens),
        "oracle": summarise(edge_quality, edge_quality, cloud_tokens),
    }
    if bar > 0:  # the same routers judged by raw agreement, for comparison
        report["by_agreement"] = {
            name: {k: v for k, v in summarise(s, agreement, cloud_tokens).items() if k != "curve"}
            for name, s in scores.items()} | {"random": random_baseline(agreement, cloud_tokens)}
    report["headline_scorer"] = headline
    report["apgr"] = report["scorers"][headline]["apgr"]
    report["cost_reduction_at_95"] = report["scorers"][headline]["cost_reduction_at_95"]
    report["random_apgr"] = report["random"]["apgr"]
    report["random_cost_reduction_at_95"] = report["random"]["cost_reduction_at_95"]
    if plot_path:
        plot(report, plot_path)
        report["plot"] = plot_path
    return report
