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

import mmap
import os
from collections.abc import Callable
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


def write_flash_file(path: str, ffns: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                     dtype: str = "fp32", progress: Callable[[int], None] | None = None) -> None:
    """One record per neuron per layer: [gate row | up row | down column | pad]."""
    torch_dtype = flash_dtype(dtype)
    with open(path, "wb") as fh:
        for gate, up, down in ffns:  # [F, H], [F, H], [H, F]
            hidden = gate.shape[1]
            width = record_bytes(hidden, dtype) // torch_dtype.itemsize
            records = torch.zeros(gate.shape[0], width, dtype=torch_dtype)
            records[:, :hidden] = gate
            records[:, hidden:2 * hidden] = up
            records[:, 2 * hidden:3 * hidden] = down.T
            fh.write(records.numpy().tobytes())
            if progress:
                progress(1)


class AlignedBuffer:
    """``rows`` page-aligned records (``dtype`` values), readable by O_DIRECT into any row."""

    def __init__(self, rows: int, row_bytes: int, dtype: torch.dtype = torch.float32) -> None:
        self.rows, self.row_bytes = rows, row_bytes
        self._mmap = mmap.mmap(-1, max(rows * row_bytes, mmap.PAGESIZE))
        self.view = memoryview(self._mmap)
        width = row_bytes // dtype.itemsize
        self.tensor = torch.frombuffer(self._mmap, dtype=dtype, count=rows * width).view(rows, width)

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes


class FlashStore:
    """The bundled file of all layers, with read counters."""

    def __init__(self, path: str, layers: int, neurons: int, hidden: int,
                 io_mode: str = "direct", io_threads: int = 4, dtype: str = "fp32") -> None:
        if io_mode not in IO_MODES:
            raise ValueError(f"io_mode must be one of {IO_MODES}, got {io_mode!r}")
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
        self._pool = ThreadPoolExecutor(io_threads, thread_name_prefix="flash-io") if io_threads > 1 else None

    def read_runs(self, layer: int, runs: list[tuple[int, int, int]], buffer: AlignedBuffer) -> None:
        """Read each (first neuron, count, first slot) run of ``layer`` into buffer rows."""
        base = layer * self.neurons * self.record

        def read(run: tuple[int, int, int]) -> None:
            first, count, slot = run
            offset, size = base + first * self.record, count * self.record
            target = buffer.view[slot * self.record: slot * self.record + size]
            if os.preadv(self.fd, [target], offset) != size:
                raise OSError(f"short read from {self.path} at {offset}")
            if self.io_mode == "fadvise":  # the next read of these bytes must hit storage
                os.posix_fadvise(self.fd, offset, size, os.POSIX_FADV_DONTNEED)

        def read_all(batch: list[tuple[int, int, int]]) -> None:
            for run in batch:
                read(run)

        if self._pool is not None and len(runs) > 8:
            # One task per thread (not per read): a pool hop costs more than a 7 KB read.
            workers = self._pool._max_workers
            list(self._pool.map(read_all, [runs[i::workers] for i in range(workers)]))
        else:
            read_all(runs)
        self.reads += len(runs)
        self.bytes_read += sum(count for _, count, _ in runs) * self.record

    def buffer(self, rows: int) -> AlignedBuffer:
        """A buffer of ``rows`` records in this file's format."""
        return AlignedBuffer(rows, self.record, self.dtype)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        os.close(self.fd)


def runs_of(neurons: np.ndarray, first_slot: int) -> list[tuple[int, int, int]]:
    """Sorted neuron ids -> (first neuron, count, first slot) runs of consecutive ids."""
    if len(neurons) == 0:
        return []
    breaks = np.flatnonzero(np.diff(neurons) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(neurons)]])
    return [(int(neurons[s]), int(e - s), first_slot + int(s)) for s, e in zip(starts, ends)]


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


def fit_predictor(gate: torch.Tensor, up: torch.Tensor, inputs: torch.Tensor, rank: int,
                  act_threshold: float, recall: float) -> Predictor:
    """Best rank-r approximation of the calibration pre-activations X [g; u]^T (top right
    singular vectors V: estimate = X W^T V V^T), and the score threshold that keeps a
    ``recall`` fraction of the calibration neurons whose true |h| reaches ``act_threshold``."""
    weight = torch.cat([gate, up])  # [2F, H]
    pre = inputs @ weight.T  # [N, 2F]
    # pre = Q R W^T shares its right singular vectors with R W^T ([<=H, 2F], much smaller)
    _, r = torch.linalg.qr(inputs)
    _, _, v = torch.linalg.svd(r @ weight.T, full_matrices=False)  # v: [<=H, 2F]
    basis = v[:rank].T.contiguous()  # [2F, r]
    predictor = Predictor(a=(basis.T @ weight).contiguous(), b=basis, threshold=0.0)
    g, u = pre.chunk(2, dim=-1)
    active = (F.silu(g) * u).abs() >= act_threshold
    scores = predictor.scores(inputs)[active]
    predictor.threshold = float(torch.quantile(scores[:16_000_000], 1.0 - recall)) if len(scores) else 0.0
    return predictor


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
