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


def test_threads_drop_to_one_while_others_use_the_cores(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    write_stat(stat, busy=1000, idle=1000)
    share = CoreShare(4, str(stat), window_s=0.0, cores=4, own_cpu_s=lambda: 0.0)
    assert share.update() == 4
    write_stat(stat, busy=1400, idle=1000)  # every tick of the window busy: 4 cores
    assert share.update() == 1
    write_stat(stat, busy=1600, idle=1200)  # half busy: 2 cores free
    assert share.update() == 2
    write_stat(stat, busy=1600, idle=1600)  # idle again
    assert share.update() == 4


def test_threads_stay_as_configured_without_a_reading(tmp_path: Path) -> None:
    missing = CoreShare(3, str(tmp_path / "absent"), window_s=0.0, cores=4)
    assert missing.update() == 3
    stat = tmp_path / "stat"
    write_stat(stat, busy=0, idle=0)
    share = CoreShare(3, str(stat), window_s=0.0, cores=4)
    write_stat(stat, busy=0, idle=0)  # no tick passed: nothing to judge by
    assert share.update() == 3
    single = CoreShare(1, str(stat), window_s=0.0, cores=4)
    write_stat(stat, busy=400, idle=0)
    assert single.update() == 1


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
