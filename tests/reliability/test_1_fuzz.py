"""Scenario 1: fuzzed Router, Cloud and Edge requests and raw bytes get defined statuses."""

import pytest

from tandem.loadtests.chaos import fuzz
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


def test_fuzzed_requests_get_defined_statuses_and_store_nothing(chaos_stack, plan):
    report = run_scenario(fuzz.run(chaos_stack, plan.fuzz))
    assert report.measured["requests"] >= 2000
