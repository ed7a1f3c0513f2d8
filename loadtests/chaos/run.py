"""Running the chaos scenarios in order against one stack and gathering one report.

Two sizes of the same scenarios: ``Plan.ci()`` (what tests/reliability runs in CI, about
ten minutes with its five-minute soak) and ``Plan.long()`` (what `tandem chaos` runs by
default: more requests, longer faults and load). Scenarios that break processes need a
ChaosStack (``--up``); against another stack they are reported as skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from tandem.loadtests.chaos import (drain, engines, faults, fuzz, isolation, load,
                                    redis_faults, soak, storm)
from tandem.loadtests.chaos.scenario import Report
from tandem.loadtests.chaos.stack import Target

# The order they run in: traffic-only scenarios first, then those that kill and restart
# parts of the stack, the soak last.
SCENARIOS = ("engines", "isolation", "fuzz", "storm", "overload", "noisy_neighbour", "redis", "faults",
             "drain", "soak")


@dataclass
class Plan:
    engines: engines.EngineSettings = field(default_factory=engines.EngineSettings)
    fuzz: fuzz.FuzzSettings = field(default_factory=fuzz.FuzzSettings)
    faults: faults.FaultSettings = field(default_factory=faults.FaultSettings)
    redis: redis_faults.RedisSettings = field(default_factory=redis_faults.RedisSettings)
    storm: storm.StormSettings = field(default_factory=storm.StormSettings)
    load: load.LoadSettings = field(default_factory=load.LoadSettings)
    isolation: isolation.IsolationSettings = field(default_factory=isolation.IsolationSettings)
    drain: drain.DrainSettings = field(default_factory=drain.DrainSettings)
    soak: soak.SoakSettings = field(default_factory=soak.SoakSettings)

    @classmethod
    def ci(cls) -> Plan:
        """The battery's sizes (the settings' defaults)."""
        return cls()

    @classmethod
    def long(cls, soak_s: float = 300.0) -> Plan:
        """Longer and larger: more fuzzing, longer faults, two minutes of overload."""
        return cls(
            fuzz=fuzz.FuzzSettings(router=1500, cloud=1000, edge=1000, raw=600),
            faults=faults.FaultSettings(stall_s=15.0, deadline_s=8.0, streams=8),
            redis=redis_faults.RedisSettings(clients=8, freeze_s=20.0, down_s=3.0, after_s=5.0),
            storm=storm.StormSettings(streams=400),
            load=load.LoadSettings(duration_s=120.0, victim_requests=16),
            isolation=isolation.IsolationSettings(trials=5),
            soak=soak.SoakSettings(duration_s=soak_s))


def scenario_runner(name: str, target: Target, plan: Plan,
                    pids: dict[str, int]) -> Callable[[], Coroutine[Any, Any, Report]]:
    """The coroutine function that runs scenario ``name``."""
    runners: dict[str, Callable[[], Coroutine[Any, Any, Report]]] = {
        "engines": lambda: engines.run(target, plan.engines, pids.get("router")),
        "isolation": lambda: isolation.run(target, plan.isolation),
        "fuzz": lambda: fuzz.run(target, plan.fuzz),
        "storm": lambda: storm.run(target, plan.storm, pids),
        "overload": lambda: load.overload(target, plan.load),
        "noisy_neighbour": lambda: load.noisy_neighbour(target, plan.load),
        "redis": lambda: redis_faults.run(target, plan.redis),  # type: ignore[arg-type]
        "faults": lambda: faults.run(target, plan.faults),  # type: ignore[arg-type]
        "drain": lambda: drain.run(target, plan.drain),  # type: ignore[arg-type]
        "soak": lambda: soak.run(target, plan.soak, pids),
    }
    return runners[name]


def pids_of(target: Target) -> dict[str, int]:
    """The services' process ids where this machine started them (memory is read from
    /proc); empty for another stack."""
    if not target.can_break():
        return {}
    return {name: target.pid(name) for name in ("router", "cloud", "edge")}  # type: ignore[attr-defined]


def run_scenarios(target: Target, plan: Plan, names: tuple[str, ...] = SCENARIOS,
                  on_report: Callable[[Report], None] = Report.print) -> dict[str, Any]:
    """Run ``names`` in the standard order; one report with every scenario's figures."""
    started = time.monotonic()
    reports = []
    for name in (n for n in SCENARIOS if n in names):
        report = asyncio.run(scenario_runner(name, target, plan, pids_of(target))())
        on_report(report)
        reports.append(report.to_json())
    return {"passed": all(r["passed"] or r.get("skipped") for r in reports),
            "seconds": round(time.monotonic() - started, 1), "scenarios": reports}
