"""How many compute threads a model step should use now: the cores that other processes
leave free, measured while its own steps run.

llama.cpp's CPU threads meet at a barrier after every op of a token (hundreds a token),
spinning while they wait. With more threads than free cores, one of them is descheduled
behind another process's thread and the others spin until it runs again: a token takes
scheduler quanta instead of milliseconds. On ``tandem up``'s two cores under a 4x overload
(the cloud's two threads busy all the time), the edge's first chunks came 3.4-4.5 s
after sending and 17 of its 20 admitted requests missed a 15 s deadline; with one thread,
none missed (`tandem chaos --scenarios overload`). On an otherwise idle machine the
configured count is faster (speculative drafting ~10 % faster with two threads than one),
so the count follows the load: the configured threads while others leave room for them,
fewer while they do not.

Linux only (``/proc/stat``); elsewhere the configured count is used as is."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

WINDOW_S = 0.2  # the steps' time the others' use is measured over before a decision


def _busy_and_total_ticks(path: str) -> tuple[int, int] | None:
    """All CPUs' busy and total clock ticks since boot (steal counts as busy: a core the
    hypervisor took is not free either)."""
    try:
        with open(path, "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    total = sum(fields)
    idle = fields[3] + fields[4]  # idle + iowait
    return total - idle, total


class CoreShare:
    """The thread count for the next step: ``wanted`` while the machine's other processes
    leave that many cores free, down to 1 while they do not (call from one thread).

    Only the time inside this process's own steps counts (``step()``). Speculative decoding
    alternates the tiers: the cloud verifies while the edge waits, then the edge drafts
    while the cloud waits. Measured over the whole window, that alternation reads as a busy
    core and cost drafting its second thread (46-58 tok/s instead of 60-63 in ``tandem bench
    speculative``); measured during the draft steps, the cores are free."""

    def __init__(self, wanted: int, stat_path: str = "/proc/stat",
                 window_s: float = WINDOW_S, cores: int | None = None,
                 own_cpu_s: Callable[[], float] = time.process_time) -> None:
        self.wanted = max(1, wanted)
        self._own_cpu_s = own_cpu_s  # this process's CPU time (its own threads)
        self.cores = cores or os.cpu_count() or 1
        self._stat_path = stat_path
        self._window_s = window_s
        self._measured = [0.0, 0, 0, 0.0]  # seconds, busy ticks, all ticks, own CPU seconds
        self.threads = self.wanted

    def _sample(self) -> tuple[float, int, int, float] | None:
        ticks = _busy_and_total_ticks(self._stat_path)
        if ticks is None:
            return None
        return time.monotonic(), ticks[0], ticks[1], self._own_cpu_s()

    @contextmanager
    def step(self) -> Iterator[int]:
        """Run one step with the yielded thread count; the cores' use during it counts
        towards the next decision (taken once a window of steps has been measured)."""
        if self.wanted == 1:
            yield 1
            return
        start = self._sample()
        yield self.threads
        end = self._sample()
        if start is None or end is None:
            return
        self._measured = m = [total + e - s for total, s, e in zip(self._measured, start, end)]
        if m[0] >= self._window_s and m[2] > 0:
            busy_cores = self.cores * m[1] / m[2]
            own_cores = m[3] / max(m[0], 1e-6)
            free = self.cores - max(busy_cores - own_cores, 0.0)
            self.threads = max(1, min(self.wanted, int(free + 0.5)))
            self._measured = [0.0, 0, 0, 0.0]
