"""Scorers on the cloud's judgement of edge answers (router/eval/judge.py), without a model."""

import numpy as np

from tandem.router.eval.judge import judge_scores
from tandem.router.eval.train import answers_of
from tandem.router.scorers import EdgeAnswer, judge_features


def row(ranks, logprobs, edge=(-0.5, -1.0)):
    return {"prompt": "p", "edge_text": "a", "cloud_ranks": list(ranks),
            "cloud_logprobs": list(logprobs), "edge_logprobs": list(edge)}


def test_the_cloud_judgement_ranks_agreeing_answers_first() -> None:
    rng = np.random.default_rng(0)
    rows, acceptable = [], []
    for i in range(40):
        agrees = i % 2 == 0  # the cloud would write most of an acceptable answer itself
        ranks = [0] * 8 + ([0, 0] if agrees else [3, 12])
        logprobs = list(rng.uniform(-0.5, 0, 8)) + ([-0.2, -0.3] if agrees else [-2.5, -4.0])
        rows.append(row(ranks, logprobs))
        acceptable.append(float(agrees))
    scores = judge_scores(answers_of(rows))  # cloud_combined: the shipped head
    assert {"cloud_mean_prob", "cloud_min_prob", "cloud_top1_share", "cloud_top5_share",
            "cloud_combined"} <= set(scores)
    y = np.asarray(acceptable, dtype=bool)
    for name in ("cloud_min_prob", "cloud_top1_share", "cloud_combined"):
        assert scores[name][y].min() > scores[name][~y].max(), name


def test_an_empty_answer_has_finite_features() -> None:
    features = judge_features([EdgeAnswer("p", "", [], cloud_logprobs=[], cloud_ranks=[])])
    assert features.shape == (1, 9) and np.all(np.isfinite(features)) and features[0, -1] == 0
