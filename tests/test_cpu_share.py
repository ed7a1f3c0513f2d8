"""The edge's thread count follows the cores other processes leave free: read from a
/proc/stat written by the test, and on the real llama.cpp model beside busy processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from pathlib import Path

import pytest

from tandem.shared.cpu_share import CoreShare


def write_stat(path: Path, busy: int, idle: int) -> None:
    # user nice system idle iowait irq softirq steal
    path.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")


def run_step(share: CoreShare, stat: Path, before: tuple[int, int],
             after: tuple[int, int]) -> int:
    """One step that starts with /proc/stat at ``before`` (busy, idle ticks) and ends at
    ``after``; the thread count the step was given."""
    write_stat(stat, *before)
    with share.step() as threads:
        write_stat(stat, *after)
    return threads


def test_threads_drop_to_one_while_others_use_the_cores(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    share = CoreShare(4, str(stat), window_s=0.0, cores=4, own_cpu_s=lambda: 0.0)
    assert run_step(share, stat, (1000, 1000), (1400, 1000)) == 4  # all 4 cores busy
    assert run_step(share, stat, (1400, 1000), (1600, 1200)) == 1  # half busy: 2 free
    assert run_step(share, stat, (1600, 1200), (1600, 1600)) == 2  # idle again
    assert share.threads == 4


def test_only_the_steps_own_time_counts(tmp_path: Path) -> None:
    """Speculative decoding alternates the tiers: the cloud's busy cores between the
    edge's draft steps leave the edge its threads."""
    stat = tmp_path / "stat"
    share = CoreShare(4, str(stat), window_s=0.0, cores=4, own_cpu_s=lambda: 0.0)
    for start in range(0, 4000, 800):  # 400 busy ticks between steps, idle during them
        assert run_step(share, stat, (start, start), (start, start + 400)) == 4
    assert share.threads == 4


def test_a_decision_waits_for_a_window_of_steps(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    share = CoreShare(4, str(stat), window_s=3600.0, cores=4, own_cpu_s=lambda: 0.0)
    run_step(share, stat, (1000, 1000), (1400, 1000))
    assert share.threads == 4


def test_its_own_threads_do_not_count_as_others(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    own = iter([0.0, 1.0e9])  # its own CPU time covers every busy tick of the step
    share = CoreShare(4, str(stat), window_s=0.0, cores=4, own_cpu_s=lambda: next(own))
    run_step(share, stat, (1000, 1000), (1400, 1000))
    assert share.threads == 4


def test_threads_stay_as_configured_without_a_reading(tmp_path: Path) -> None:
    missing = CoreShare(3, str(tmp_path / "absent"), window_s=0.0, cores=4)
    with missing.step() as threads:
        assert threads == 3
    assert missing.threads == 3
    stat = tmp_path / "stat"
    share = CoreShare(3, str(stat), window_s=0.0, cores=4)
    assert run_step(share, stat, (0, 0), (0, 0)) == 3  # no tick passed: nothing to judge by
    assert share.threads == 3
    single = CoreShare(1, str(stat), window_s=0.0, cores=4)
    assert run_step(single, stat, (0, 0), (400, 0)) == 1
    assert single.threads == 1


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.real_model
def test_the_llama_cpp_edge_uses_one_thread_beside_busy_processes() -> None:
    from tandem.edge.llama_cpp_backend import LlamaCppBackend
    from tandem.shared.models import DEFAULT_MODEL, resolve_model
    from tandem.shared.sampling import SamplingParams, TokenSampler
    from tandem.shared.tier_handler import TokenRequest

    cores = multiprocessing.cpu_count()
    backend = LlamaCppBackend.open(str(resolve_model(DEFAULT_MODEL).path), slots=1,
                                   context_window=256, threads=cores)
    request = TokenRequest(list(range(1000, 1010)), TokenSampler(SamplingParams(max_tokens=40)),
                           "t")

    async def generate() -> list[int]:
        return [item.token async for item in backend.generate(request)]

    spinners = [multiprocessing.Process(target=spin, args=(30.0,)) for _ in range(cores)]
    for p in spinners:
        p.start()
    try:
        time.sleep(0.5)
        tokens = asyncio.run(generate())
        threads = backend.model.threads
    finally:
        for p in spinners:
            p.terminate()
            p.join()
        backend.close()
    assert len(tokens) == 40
    assert threads == 1
