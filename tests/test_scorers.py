"""Confidence scorers: each ranks a confident edge answer above an unsure one."""

import numpy as np

from tandem.router.scorers import SCORERS, EdgeAnswer, confidence_features

SURE = EdgeAnswer("q", "a", logprobs=[-0.01, -0.02, -0.05], entropies=[0.05, 0.1, 0.2])
UNSURE = EdgeAnswer("q", "b", logprobs=[-1.5, -2.0, -0.7], entropies=[2.5, 3.1, 1.9])


def test_confidence_scorers_prefer_the_sure_answer():
    for name in ("mean_prob", "min_prob", "entropy"):
        sure, unsure = SCORERS[name]().score_many([SURE, UNSURE])
        assert 0.0 <= unsure < sure <= 1.0, name


def test_confidence_features_without_signals_count_as_unsure():
    features = confidence_features([EdgeAnswer("q", "", logprobs=[])])
    assert features.shape == (1, 5)
    np.testing.assert_allclose(features[0], [-10.0, -10.0, 0.0, 5.0, 5.0])
    assert SCORERS["entropy"]().score(EdgeAnswer("q", "", [])) < \
        SCORERS["entropy"]().score(SURE)
