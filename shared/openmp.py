"""How torch's OpenMP worker threads wait between parallel regions. libgomp reads this
once, when torch loads, so it is set in the environment before the first torch import.

A decode step is ~120 short parallel matmuls with single-threaded work between them. A
worker that sleeps at once (PASSIVE) is woken by a futex for every matmul; one that spins
for a bounded count (ACTIVE + GOMP_SPINCOUNT) is still awake for the next matmul and falls
asleep soon after the engine goes idle. Measured on this machine kind (2 cores, SmolLM2
fp32): batch-1 decode 41 tok/s with libgomp's default, ~55 with a 10^6 spin; unbounded
ACTIVE spun a core at 100% while idle. Values already in the environment win.
"""

from __future__ import annotations

import os
import sys


def set_openmp_wait(spin_count: int) -> None:
    """0: sleep at once (PASSIVE); N > 0: spin N iterations first (ACTIVE, bounded)."""
    if "torch" in sys.modules:
        raise RuntimeError("set_openmp_wait must run before torch is imported")
    if spin_count <= 0:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    else:
        os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
        os.environ.setdefault("GOMP_SPINCOUNT", str(spin_count))
