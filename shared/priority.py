"""The CPU priority of a tier's model thread, below its event loop's.

A tier's event loop admits or refuses requests and streams answers; its model thread and
the OpenMP/ggml workers that thread starts keep every core busy under load. Where tiers,
router and clients share a machine (``tandem up`` on two cores), equal priority left the
loops waiting behind four compute threads: refusals that take milliseconds of work took
up to 1.4 s at p99 under a 4x overload (`tandem chaos --scenarios overload`). The model
thread lowers its own priority (Linux: nice is per thread, and threads it creates later
inherit it), so the loops run first when they have work and the model takes the rest; on
an otherwise idle machine nothing changes."""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

_nice = 0  # set by the service before its model thread starts


def set_compute_nice(nice: int) -> None:
    """How much lower than the process the model thread runs (0: the same priority)."""
    global _nice
    _nice = nice


def lower_model_thread() -> None:
    """Called first thing on a model thread: lower its priority by the configured nice."""
    if _nice <= 0:
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + _nice, 19))
    except (OSError, AttributeError) as exc:  # not Linux, or not permitted: run as is
        log.warning("cannot lower the model thread's priority (%s); it runs at the loop's", exc)
