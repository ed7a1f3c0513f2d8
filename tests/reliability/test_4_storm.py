"""Scenario 4: a disconnect storm frees everything."""

import pytest

from tandem.loadtests.chaos import storm
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


def test_a_disconnect_storm_stops_all_work_and_frees_everything(chaos_stack, plan, pids):
    run_scenario(storm.run(chaos_stack, plan.storm, pids))
