"""Flash offloading of the FFN (after "LLM in a Flash", Alizadeh et al. 2024).

* Row–column bundling: neuron i of a layer is one record holding its gate row, up row and
  down column ([3, H] in fp32 or fp16; computed in fp32), padded to the direct-I/O alignment, so one neuron is one read
  and consecutive neurons coalesce into one larger read.
* Neuron selector: a low-rank predictor, fitted on calibration activations, estimates
  |silu(gate x) * up x| for every neuron before any weight is read.
* Windowing (§3.3): the neurons used by the last k tokens stay in a preallocated DRAM
  buffer; new neurons are appended, evicted ones are deleted by swapping the last row in.
* Reads hit storage: the file is opened with O_DIRECT (or the page cache is dropped with
  posix_fadvise DONTNEED), and every read and byte is counted.

Windowing changes only what is cached: a token's selected neurons are gathered in neuron
order from the buffer, exactly as the non-windowed path reads them, so both produce
bit-identical outputs.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

ALIGN = 512  # O_DIRECT needs offsets, lengths and buffer addresses aligned to the block size
IO_MODES = ("direct", "fadvise")
# Storage formats of the bundles (the arithmetic is fp32 after widening the rows read)
FLASH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}


def flash_dtype(name: str) -> torch.dtype:
    if name not in FLASH_DTYPES:
        raise ValueError(f"flash dtype must be one of {sorted(FLASH_DTYPES)}, got {name!r}")
    return FLASH_DTYPES[name]


def record_bytes(hidden: int, dtype: str = "fp32") -> int:
    """Bytes of one neuron's record: [3, H] values padded to the direct-I/O alignment
    (SmolLM2, H=576: 7168 B in fp32, 3584 B = 7 x 512 B in fp16)."""
    return -(-3 * hidden * flash_dtype(dtype).itemsize // ALIGN) * ALIGN


class AlignedBuffer:
    """``rows`` page-aligned records (``dtype`` values), readable by O_DIRECT into any row."""

    def __init__(self, rows: int, row_bytes: int, dtype: torch.dtype = torch.float32) -> None:
        self.rows, self.row_bytes = rows, row_bytes
        self._mmap = mmap.mmap(-1, max(rows * row_bytes, mmap.PAGESIZE))
        self.view = memoryview(self._mmap)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self._mmap))  # for AIO
        width = row_bytes // dtype.itemsize
        self.tensor = torch.frombuffer(self._mmap, dtype=dtype, count=rows * width).view(rows, width)

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes


IO_ENGINES = ("aio", "threads")


class LinuxAio:
    """Linux native AIO through syscall(2) (io_setup / io_submit / io_getevents): all reads
    of a layer go to the device in one system call, with no Python thread per read (the
    thread pool reached ~47K reads/s here, one io_submit batch ~65K)."""

    # (io_setup, io_destroy, io_getevents, io_submit) per machine
    SYSCALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}
    IOCB = np.dtype([("data", "<u8"), ("key", "<u4"), ("rw_flags", "<u4"), ("opcode", "<u2"),
                     ("reqprio", "<i2"), ("fildes", "<u4"), ("buf", "<u8"), ("nbytes", "<u8"),
                     ("offset", "<i8"), ("reserved2", "<u8"), ("flags", "<u4"), ("resfd", "<u4")])
    EVENT = np.dtype([("data", "<u8"), ("obj", "<u8"), ("res", "<i8"), ("res2", "<i8")])

    def __init__(self, fd: int, depth: int) -> None:
        import ctypes
        import platform

        if platform.machine() not in self.SYSCALLS:
            raise OSError(f"io_engine 'aio' needs Linux on {sorted(self.SYSCALLS)}; use 'threads'")
        self._setup, self._destroy, self._getevents, self._submit = self.SYSCALLS[platform.machine()]
        self._ct = ctypes
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long
        self._ctx = ctypes.c_ulong(0)
        if self._libc.syscall(self._setup, depth, ctypes.byref(self._ctx)) != 0:
            raise OSError(ctypes.get_errno(), "io_setup failed; use io_engine 'threads'")
        self.fd, self.depth = fd, depth
        self.iocbs = np.zeros(depth, self.IOCB)  # opcode 0 = IOCB_CMD_PREAD
        self.iocbs["fildes"] = fd
        self.pointers = self.iocbs.ctypes.data + np.arange(depth, dtype=np.uint64) * self.IOCB.itemsize
        self.events = np.zeros(depth, self.EVENT)

    def read(self, offsets: np.ndarray, sizes: np.ndarray, addresses: np.ndarray) -> None:
        """Read sizes[i] bytes at offsets[i] to addresses[i]; returns when all are done."""
        for lo in range(0, len(offsets), self.depth):
            n = min(self.depth, len(offsets) - lo)
            cbs = self.iocbs[:n]
            cbs["offset"], cbs["nbytes"], cbs["buf"] = (offsets[lo:lo + n], sizes[lo:lo + n],
                                                        addresses[lo:lo + n])
            cbs["data"] = np.arange(n)
            self._call(self._submit, n, self.pointers.ctypes.data, "io_submit")
            done = 0
            while done < n:
                got = self._call(self._getevents, n - done, self.events.ctypes.data, "io_getevents")
                events = self.events[:got]
                bad = events["res"] != sizes[lo + events["data"].astype(np.int64)]
                if bad.any():
                    res = int(events["res"][bad][0])
                    raise OSError(-res if res < 0 else 0, f"flash read returned {res}")
                done += got

    def _call(self, number: int, count: int, array: int, name: str) -> int:
        ct = self._ct
        if name == "io_submit":
            result = self._libc.syscall(number, self._ctx, ct.c_long(count), ct.c_void_p(array))
        else:  # wait for all ``count`` (min_nr = nr = count), no timeout
            result = self._libc.syscall(number, self._ctx, ct.c_long(count), ct.c_long(count),
                                        ct.c_void_p(array), None)
        if result < 0 or (name == "io_submit" and result != count):
            raise OSError(ct.get_errno(), f"{name} returned {result}")
        return int(result)

    def close(self) -> None:
        self._libc.syscall(self._destroy, self._ctx)


class FlashStore:
    """The bundled file of all layers, with read counters. Reads go through Linux AIO
    (``aio``: a layer's runs in one io_submit) or a thread pool of os.preadv (``threads``)."""

    def __init__(self, path: str, layers: int, neurons: int, hidden: int,
                 io_mode: str = "direct", io_threads: int = 8, dtype: str = "fp32",
                 io_engine: str = "aio") -> None:
        if io_mode not in IO_MODES:
            raise ValueError(f"io_mode must be one of {IO_MODES}, got {io_mode!r}")
        if io_engine not in IO_ENGINES:
            raise ValueError(f"io_engine must be one of {IO_ENGINES}, got {io_engine!r}")
        self.path, self.neurons, self.hidden, self.io_mode = path, neurons, hidden, io_mode
        self.dtype = flash_dtype(dtype)
        self.record = record_bytes(hidden, dtype)
        expected = layers * neurons * self.record
        if os.path.getsize(path) != expected:
            raise ValueError(f"{path}: {os.path.getsize(path)} bytes, expected {expected}")
        flags = os.O_RDONLY | (os.O_DIRECT if io_mode == "direct" else 0)
        self.fd = os.open(path, flags)
        self.bytes_read = 0
        self.reads = 0
        self.read_seconds = 0.0  # wall time spent reading
        self.phase_seconds: Counter[str] = Counter()  # decode FFN time by phase (flash_ffn)
        self.io_engine = io_engine
        self._aio = LinuxAio(self.fd, min(neurons, 1024)) if io_engine == "aio" else None
        self._pool = (ThreadPoolExecutor(io_threads, thread_name_prefix="flash-io")
                      if io_engine == "threads" and io_threads > 1 else None)

    def read_runs(self, layer: int, runs: np.ndarray, buffer: AlignedBuffer) -> None:
        """Read each (first neuron, count, first slot) run ([n, 3]) of ``layer`` into buffer rows."""
        if len(runs) == 0:
            return
        started = time.perf_counter()
        offsets = (layer * self.neurons + runs[:, 0]) * self.record
        sizes = runs[:, 1] * self.record
        if self._aio is not None:
            self._aio.read(offsets, sizes, buffer.address + runs[:, 2] * self.record)
        else:
            self._read_threads(offsets, sizes, runs[:, 2] * self.record, buffer)
        if self.io_mode == "fadvise":  # the next read of these bytes must hit storage
            for offset, size in zip(offsets.tolist(), sizes.tolist()):
                os.posix_fadvise(self.fd, offset, size, os.POSIX_FADV_DONTNEED)
        self.reads += len(runs)
        self.bytes_read += int(sizes.sum())
        self.read_seconds += time.perf_counter() - started

    def _read_threads(self, offsets: np.ndarray, sizes: np.ndarray, targets: np.ndarray,
                      buffer: AlignedBuffer) -> None:
        def read_all(part: list[tuple[int, int, int]]) -> None:
            for offset, size, target in part:
                if os.preadv(self.fd, [buffer.view[target: target + size]], offset) != size:
                    raise OSError(f"short read from {self.path} at {offset}")

        work = list(zip(offsets.tolist(), sizes.tolist(), targets.tolist()))
        if self._pool is not None and len(work) > 8:
            # One task per thread (not per read): a pool hop costs more than a 7 KB read.
            workers = self._pool._max_workers
            list(self._pool.map(read_all, [work[i::workers] for i in range(workers)]))
        else:
            read_all(work)

    def buffer(self, rows: int) -> AlignedBuffer:
        """A buffer of ``rows`` records in this file's format."""
        return AlignedBuffer(rows, self.record, self.dtype)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        if self._aio is not None:
            self._aio.close()
        os.close(self.fd)


def runs_of(neurons: np.ndarray, first_slot: int) -> np.ndarray:
    """Sorted neuron ids -> [n, 3] runs (first neuron, count, first slot) of consecutive ids."""
    if len(neurons) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(neurons) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(neurons)]])
    return np.stack([neurons[starts], ends - starts, first_slot + starts], axis=1).astype(np.int64)


def fill_gaps(missing: np.ndarray, uncached: np.ndarray, max_gap: int) -> np.ndarray:
    """Add to the sorted ``missing`` ids the gaps of at most ``max_gap`` uncached neurons
    between two of them, so the two reads become one (a few more bytes, one fewer read)."""
    if max_gap <= 0 or len(missing) < 2:
        return missing
    cached_before = np.concatenate([[0], np.cumsum(~uncached)])  # cached ids below i
    a, b = missing[:-1], missing[1:]
    gap = b - a - 1
    fill = (gap > 0) & (gap <= max_gap) & (cached_before[b] - cached_before[a + 1] == 0)
    extra = [np.arange(x + 1, y) for x, y in zip(a[fill], b[fill])]
    return np.sort(np.concatenate([missing, *extra])) if extra else missing


@dataclass
class Predictor:
    """Low-rank estimate of [gate x; up x]: B (A x), A [r, H], B [2F, r]."""

    a: torch.Tensor
    b: torch.Tensor
    threshold: float  # select neurons whose estimated |silu(g) * u| reaches this

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        est = F.linear(F.linear(x, self.a), self.b)  # [T, 2F]
        g, u = est.chunk(2, dim=-1)
        return (F.silu(g) * u).abs()  # [T, F]

    @property
    def nbytes(self) -> int:
        return (self.a.numel() + self.b.numel()) * 4


class Int8Selector:
    """Selects by |silu(gate x) * up x| computed from resident INT8 copies of gate and up:
    exact up to INT8 rounding (the low-rank predictor is too coarse for SmolLM2's SwiGLU
    FFN; see the note). The fp32 bundles of the selected neurons are still read."""

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, threshold: float) -> None:
        from tandem.edge.quantize import Int8Linear

        self.gate, self.up = Int8Linear.from_dense(gate), Int8Linear.from_dense(up)
        self.threshold = threshold

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return (F.silu(self.gate(x)) * self.up(x)).abs()  # [T, F]

    @property
    def nbytes(self) -> int:
        return self.gate.nbytes + self.up.nbytes
