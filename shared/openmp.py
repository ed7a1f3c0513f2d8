"""How the model tiers' OpenMP threads wait between parallel regions (torch in the cloud,
llama.cpp's CPU backend on the edge). libgomp reads this once, when it loads, so it is set
in the environment before the first torch or llama.cpp import.

A cloud decode step is ~120 short parallel matmuls with single-threaded work between them;
a llama.cpp token is hundreds of barriers. A thread that sleeps at once (PASSIVE) is woken
by a futex each time: llama.cpp drafted at 28.6 ms/token instead of ~7, the cloud decoded
41 tok/s instead of 50-55. A thread that spins a bounded count (ACTIVE + GOMP_SPINCOUNT)
is still awake for the next region and falls asleep soon after its work ends. The spin is
paid after every step: 10^5 iterations burned ~2.6 ms of a core, 10^6 ~24 ms and libgomp's
default 3*10^5 ~7.5 ms, time that the other tier, running next on a shared machine (the
speculative loop alternates them), loses; unbounded ACTIVE spun a core at 100% while idle.
Values already in the environment win. (Measured on this machine kind, 2 cores.)"""

from __future__ import annotations

import os
import sys


def set_openmp_wait(spin_count: int) -> None:
    """0: sleep at once (PASSIVE); N > 0: spin N iterations first (ACTIVE, bounded)."""
    loaded = sorted({"torch", "llama_cpp"} & set(sys.modules))
    if loaded:
        raise RuntimeError(f"set_openmp_wait must run before {loaded} is imported")
    if spin_count <= 0:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    else:
        os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
        os.environ.setdefault("GOMP_SPINCOUNT", str(spin_count))
