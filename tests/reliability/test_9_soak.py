"""Scenario 9: the soak's CI version (five minutes of mixed load)."""

import json
import os

import pytest

from tandem.loadtests.chaos import soak
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


def test_a_soak_leaks_nothing_and_fails_nothing(chaos_stack, plan, pids, tmp_path):
    report = run_scenario(soak.run(chaos_stack, plan.soak, pids))
    out = os.environ.get("TANDEM_SOAK_DIR") or str(tmp_path)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump(report.to_json(), f, indent=1, default=str)
    soak.plot(report.to_json(), os.path.join(out, "soak.png"))
    assert os.path.getsize(os.path.join(out, "soak.png")) > 0
