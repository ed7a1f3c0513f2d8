"""Give the heap's freed memory back to the operating system, and keep the objects a
process makes while starting out of the garbage collector's full collections.

A tier's batches come in many shapes, and glibc's malloc keeps what they free in its
arenas for reuse rather than returning it. The cloud engine calls
``release_free_memory`` when it goes idle and now and then between steps, so that its
RSS follows what it holds rather than the largest batches it once ran (measured: one
trim after varied batches of the real model released ~50 MB; it did not stop the slower
growth seen over a long soak, whose cause is not settled)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to trim with
        logger.debug("malloc_trim is not available")
        return None


def release_free_memory() -> bool:
    """Return free heap memory of every arena to the OS (glibc ``malloc_trim(0)``);
    whether any was released (False where the C library has no malloc_trim)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def freeze_startup_objects() -> None:
    """Move everything allocated while starting (models, tokenizers, modules) out of the
    collector's reach; called once models are loaded, before serving. Python's full
    collection walks every tracked object: with those in, each one paused the router and
    the cloud for 0.2-0.3 s under load (gc.callbacks during the overload scenario), and
    every call on their event loops waited. They live as long as the process, so there is
    nothing to collect among them. (vLLM's engine core freezes its startup heap too.)"""
    gc.collect()
    gc.freeze()
