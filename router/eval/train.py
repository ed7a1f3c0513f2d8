"""`tandem eval train-scorer`: fit the learned cascade scorer, the prompt router and the
cloud-judged combination on labelled answers, and calibrate a scorer's cascade threshold
to a cloud budget (any scorer's, the cloud-judged ones included); and
speculative-cascade's leniency τ to a budget of cloud forward passes, from its measured
curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tandem.router.head import LogisticHead, cross_validated_l2, out_of_fold_predictions
from tandem.router.scorers import (SCORERS, CloudCombinedScorer, EdgeAnswer, LearnedScorer,
                                   answer_features, judge_features, prompt_features)


def answers_of(rows: list[dict[str, Any]]) -> list[EdgeAnswer]:
    """The labelled edge answers, with the cloud's judgement where the labels carry it."""
    return [EdgeAnswer(r["prompt"], r["edge_text"], r["edge_logprobs"],
                       r.get("edge_entropies", ()), r.get("cloud_logprobs", ()),
                       r.get("cloud_ranks", ())) for r in rows]


def acceptable(rows: list[dict[str, Any]], metric: str, bar: float) -> np.ndarray:
    """1 where the edge answer agrees with the cloud's at least ``bar`` (by ``metric``)."""
    return np.asarray([float(r[metric] >= bar) for r in rows])


def threshold_for_budget(scores: np.ndarray, cloud_tokens: np.ndarray, budget: float,
                         by: str = "requests") -> float:
    """The highest threshold whose escalations (score < threshold) stay within ``budget``,
    a fraction of requests or of cloud tokens."""
    order = np.argsort(scores)
    weights = np.ones(len(scores)) if by == "requests" else cloud_tokens[order].astype(float)
    share = np.cumsum(weights) / weights.sum()  # share escalated if the i+1 lowest escalate
    within = np.flatnonzero(share <= budget + 1e-12)
    if len(within) == 0:
        return float(scores.min())  # escalate nothing
    last = within[-1]
    upper = scores[order[last + 1]] if last + 1 < len(order) else scores[order[last]] + 1e-6
    return float((scores[order[last]] + upper) / 2)


def threshold_for_quality(scores: np.ndarray, edge_quality: np.ndarray, target: float) -> float:
    """The lowest threshold (fewest escalations) whose mean quality reaches ``target``:
    an escalated request counts as the cloud's own answer (quality 1)."""
    order = np.argsort(scores)
    quality = edge_quality.mean() + np.concatenate(
        [[0.0], np.cumsum(1.0 - edge_quality[order])]) / len(scores)
    reached = np.flatnonzero(quality >= target - 1e-12)
    count = int(reached[0]) if len(reached) else len(scores)  # escalate the `count` lowest
    if count == 0:
        return float(scores.min())
    if count == len(scores):
        return float(scores.max() + 1e-6)
    return float((scores[order[count - 1]] + scores[order[count]]) / 2)


def leniency_for_budget(points: list[dict[str, Any]], pass_budget: float
                        ) -> dict[str, Any] | None:
    """From speculative-cascade's measured curve (`tandem eval cascade --taus`): the
    strictest τ (the best quality) whose cloud passes stay within ``pass_budget``, a share
    of cloud-only serving's; None when no measured τ is that cheap."""
    within = [p for p in points if 1.0 - p["cloud_pass_reduction"] <= pass_budget + 1e-12]
    if not within:
        return None
    best = max(within, key=lambda p: (p["tau"], p["quality"]))
    return {"pass_budget": pass_budget, "tau": best["tau"], "quality": best["quality"],
            "cloud_pass_share": round(1.0 - best["cloud_pass_reduction"], 4)}


def train(rows: list[dict[str, Any]], encoder: object, out_dir: Path, metric: str = "rouge_l",
          bar: float = 0.5, budget: float = 0.3, quality_target: float | None = None,
          scorer: str = "learned") -> dict[str, Any]:
    """Fit and save the heads (the learned scorer's, the prompt router's and, on labels the
    cloud judged, cloud_combined's), and calibrate ``scorer``'s threshold (a trained one's
    by its out-of-fold scores); returns a report (CV-chosen L2s, label balance, threshold)."""
    labels = acceptable(rows, metric, bar)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"all {len(rows)} labels are equal at {metric} >= {bar}; cannot train")
    if getattr(SCORERS[scorer], "needs_cloud", False) and not all(
            "cloud_logprobs" in r for r in rows):
        raise ValueError(f"scorer {scorer} needs the cloud's judgement of every labelled "
                         "answer (`tandem eval cascade` writes it into the labels)")
    answers = answers_of(rows)
    x_answer = answer_features(encoder, answers)
    x_prompt = prompt_features(encoder, [r["prompt"] for r in rows])
    report: dict[str, Any] = {"rows": len(rows), "acceptable_share": float(labels.mean()),
                              "metric": metric, "bar": bar, "scorer": scorer}
    heads = {"cascade": x_answer, "route": x_prompt}
    if all("cloud_logprobs" in r for r in rows):  # judged labels: cloud_combined's head too
        heads["judge"] = judge_features(answers)
    trained = {"cascade": LearnedScorer.name, "judge": CloudCombinedScorer.name}
    scores = None if scorer in trained.values() else SCORERS[scorer]().score_many(answers)
    for name, x in heads.items():
        l2 = cross_validated_l2(x, labels)
        head = LogisticHead.fit(x, labels, l2)
        head.save(out_dir / f"{name}_head.npz")
        report[f"{name}_l2"] = l2
        if trained.get(name) == scorer:
            scores = out_of_fold_predictions(x, labels, l2)  # in-sample would be overconfident
    assert scores is not None
    if quality_target is None:
        cloud_tokens = np.asarray([r["cloud_tokens"] for r in rows])
        report["threshold"] = threshold_for_budget(np.asarray(scores), cloud_tokens, budget)
        report["budget"] = budget
    else:
        quality = np.asarray([r[metric] for r in rows], dtype=float)
        report["threshold"] = threshold_for_quality(np.asarray(scores), quality, quality_target)
        report["quality_target"] = quality_target
    calibration = {k: report[k] for k in ("scorer", "threshold", "budget", "quality_target",
                                          "metric", "bar") if k in report}
    (out_dir / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
    return report
