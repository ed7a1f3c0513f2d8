"""A tier's model thread runs below its event loop (shared/priority.py)."""

import os
import threading

import pytest

from tandem.shared.priority import lower_model_thread, set_compute_nice
from tandem.shared.service_config import TierConfig


def nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_model_thread_and_the_threads_it_starts_run_lower_and_the_loop_does_not() -> None:
    loop_nice, seen = nice_of_this_thread(), {}

    def model_thread() -> None:
        lower_model_thread()
        seen["model"] = nice_of_this_thread()
        worker = threading.Thread(target=lambda: seen.update(worker=nice_of_this_thread()))
        worker.start()  # as OpenMP's or ggml's workers are, later, from this thread
        worker.join()

    set_compute_nice(5)
    try:
        thread = threading.Thread(target=model_thread)
        thread.start()
        thread.join()
    finally:
        set_compute_nice(0)
    expected = min(loop_nice + 5, 19)
    assert seen == {"model": expected, "worker": expected}
    assert nice_of_this_thread() == loop_nice


def test_compute_nice_is_bounded() -> None:
    with pytest.raises(ValueError, match="compute_nice"):
        TierConfig(compute_nice=20)
    with pytest.raises(ValueError, match="compute_nice"):
        TierConfig(compute_nice=-1)
