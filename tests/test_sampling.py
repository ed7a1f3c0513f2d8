import math

import numpy as np
import pytest

from tandem.shared.errors import InvalidArgument
from tandem.shared.sampling import SamplingParams, TokenSampler
from tandem.v1 import common_pb2

LIMITS = dict(default_max_tokens=16, max_tokens_cap=64)


def params(**fields):
    return SamplingParams.from_pb(common_pb2.SamplingParams(**fields), **LIMITS)


def test_defaults_are_greedy_with_server_max_tokens():
    p = params()
    assert p.greedy and p.max_tokens == 16 and p.top_p == 1.0


@pytest.mark.parametrize("fields, field_name", [
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=-3), "max_tokens"),
    (dict(max_tokens=65), "max_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=math.nan), "temperature"),
    (dict(temperature=math.inf), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(stop=[""]), "stop"),
    (dict(temperature=1e9), "temperature"),
    (dict(repetition_penalty=1e-40), "repetition_penalty"),
])
def test_invalid_parameters_name_the_field(fields, field_name):
    with pytest.raises(InvalidArgument, match=f"^{field_name}:"):
        params(**fields)


def test_greedy_picks_argmax_and_reports_raw_logprob():
    logits = np.array([0.0, 3.0, 1.0], dtype=np.float32)
    token, logprob, prob = TokenSampler(params()).sample(logits)
    expected = 3.0 - math.log(math.exp(0) + math.exp(3) + math.exp(1))
    assert token == 1 and logprob == pytest.approx(expected, rel=1e-5)
    assert prob == pytest.approx(math.exp(expected), rel=1e-5)


def test_same_seed_same_tokens_and_top_k_restricts_support():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(50, 100)).astype(np.float32)
    a = TokenSampler(params(temperature=1.0, seed=7, top_k=3))
    b = TokenSampler(params(temperature=1.0, seed=7, top_k=3))
    picks_a = [a.sample(r)[0] for r in rows]
    assert picks_a == [b.sample(r)[0] for r in rows]
    for row, pick in zip(rows, picks_a):
        assert pick in np.argsort(-row)[:3]


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    probs = TokenSampler(params(temperature=1.0, top_p=0.7)).distribution(logits)
    assert probs[2] == 0 and probs[3] == 0
    assert probs[0] == pytest.approx(0.5 / 0.8)


def test_entropy_of_uniform_and_certain_distributions():
    def entropy_of(logits):
        return TokenSampler(params(), report_entropy=True).sample_with_entropy(logits)[2]

    assert abs(entropy_of(np.zeros(1000, dtype=np.float32)) - math.log(1000)) < 1e-4
    certain = np.full(1000, -1e4, dtype=np.float32)
    certain[3] = 0.0
    assert entropy_of(certain) < 1e-6
    assert TokenSampler(params()).sample_with_entropy(certain) == (3, 0.0, 0.0)


def test_a_tiny_temperature_samples_the_argmax_instead_of_overflowing():
    logits = np.array([0.0, 30.0, 29.0], dtype=np.float32)
    sampler = TokenSampler(SamplingParams(max_tokens=1, temperature=1e-300))
    assert sampler.sample(logits)[0] == 1


def test_values_that_break_the_distribution_fail_with_invalid_argument():
    """Constructed past validation (as a future bug might): the request fails with its
    own INVALID_ARGUMENT, never with a NaN distribution."""
    sampler = TokenSampler(SamplingParams(max_tokens=1, temperature=0.7,
                                          repetition_penalty=1e-40))
    sampler.set_prompt([0, 1, 2])
    with pytest.raises(InvalidArgument, match="^sampling:"):
        sampler.sample(np.array([30.0, 5.0, -3.0], dtype=np.float32))
