"""Getting the on-device model ready before it is loaded: locate it (installed PyPI
package or a path), optionally copy it into an app's own folder with progress, verify
its sha256, and compare the memory it needs with what the device has available."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tandem.shared.log import log_event
from tandem.shared.models import ModelSource, resolve_model

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20
# llama.cpp needs the mapped weights plus KV cache and scratch buffers; for a small
# model at a few thousand tokens of context those stay within this fraction of the file.
RUNTIME_OVERHEAD = 0.5

Progress = Callable[[str, int, int], None]  # (what, bytes done, bytes total)


class ChecksumMismatch(ValueError):
    """The model file is not the one the app expects."""


class InsufficientMemory(MemoryError):
    """Loading the model would need more memory than the device has available."""


@dataclass(frozen=True)
class MemoryReport:
    needed_bytes: int
    available_bytes: int | None  # None where the platform does not tell

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.needed_bytes <= self.available_bytes


def print_progress(what: str, done: int, total: int) -> None:
    """A progress line on stderr (the default reporter)."""
    percent = 100 * done // max(total, 1)
    end = "\n" if done >= total else ""
    print(f"\r{what}: {done >> 20}/{total >> 20} MiB ({percent}%)", end=end, file=sys.stderr,
          flush=True)


def sha256_of(path: Path, progress: Progress | None = None) -> str:
    total = path.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
            done += len(block)
            if progress:
                progress(f"verifying {path.name}", done, total)
    return digest.hexdigest()


def copy_model(source: ModelSource, dest_dir: Path, progress: Progress | None = None) -> ModelSource:
    """Copy a GGUF model into ``dest_dir`` (e.g. an app's data folder), atomically."""
    if not source.is_gguf:
        raise ValueError(f"only .gguf files are copied, got {source.path}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / source.path.name
    total = source.path.stat().st_size
    if dest.is_file() and dest.stat().st_size == total:
        return ModelSource(str(dest), dest)
    tmp = dest.with_suffix(f".part{os.getpid()}")
    done = 0
    with source.path.open("rb") as src, tmp.open("wb") as out:
        while block := src.read(CHUNK_BYTES):
            out.write(block)
            done += len(block)
            if progress:
                progress(f"copying {source.path.name}", done, total)
    os.replace(tmp, dest)
    return ModelSource(str(dest), dest)


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux/Android), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_report(source: ModelSource) -> MemoryReport:
    files = [source.path] if source.path.is_file() else list(source.path.glob("*"))
    weights = sum(f.stat().st_size for f in files if f.is_file())
    return MemoryReport(int(weights * (1 + RUNTIME_OVERHEAD)), available_memory())


def provision(spec: str, *, sha256: str = "", copy_to: str | Path | None = None,
              progress: Progress | None = None) -> ModelSource:
    """The model ``spec`` ready to load, or an error that says what is wrong."""
    source = resolve_model(spec)
    if copy_to is not None:
        source = copy_model(source, Path(copy_to), progress)
    if sha256:
        if not source.path.is_file():
            raise ValueError(f"sha256 can only be verified for a single model file: {source.path}")
        actual = sha256_of(source.path, progress)
        if actual != sha256.lower():
            raise ChecksumMismatch(f"model {source.path}: sha256 {actual} != expected {sha256}")
    report = memory_report(source)
    log_event(logger, "model memory", model=source.name,
              needed_mib=report.needed_bytes >> 20,
              available_mib=None if report.available_bytes is None else report.available_bytes >> 20)
    if not report.fits:
        raise InsufficientMemory(
            f"model {source.name} needs about {report.needed_bytes >> 20} MiB; only "
            f"{(report.available_bytes or 0) >> 20} MiB are available")
    return source
