"""FFN layers whose weights live in the flash file: the naive baseline (read the whole
layer every token) and the predictor-selected, windowed runtime of LLM in a Flash."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from tandem.edge.flash import AlignedBuffer, FlashStore, Predictor, fill_gaps, runs_of


class NaiveFlashFFN:
    """Reads every neuron of the layer (one large read) into a buffer shared by all layers
    and runs the dense FFN: the baseline that pays for the whole FFN from storage."""

    kind = "flash_naive"

    def __init__(self, layer: int, store: FlashStore, buffer: AlignedBuffer) -> None:
        self.layer, self.store, self.buffer = layer, store, buffer
        self.owns_buffer = layer == 0  # count the shared buffer once

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.store.hidden
        started = time.perf_counter()
        self.store.read_runs(self.layer, np.array([[0, self.store.neurons, 0]]), self.buffer)
        read = time.perf_counter()
        rows = self.buffer.tensor.float()  # [F, R] (widened when stored in fp16)
        h = F.silu(F.linear(x, rows[:, :hidden])) * F.linear(x, rows[:, hidden:2 * hidden])
        out = h @ rows[:, 2 * hidden:3 * hidden]  # [T, H]
        clock = self.store.phase_seconds
        clock["read"] += read - started
        clock["compute"] += time.perf_counter() - read
        return out

    @property
    def dram_bytes(self) -> int:
        return self.buffer.nbytes if self.owns_buffer else 0


class WindowedFlashFFN:
    """Predictor-selected neurons, cached for the last ``window`` tokens in a buffer of
    ``capacity`` rows (window 0: nothing is kept, every selected neuron is read)."""

    kind = "flash"

    def __init__(self, layer: int, store: FlashStore, predictor: Predictor,
                 act_threshold: float, capacity: int, window: int, max_gap: int = 0) -> None:
        if not 1 <= capacity <= store.neurons:
            raise ValueError(f"capacity must be in [1, {store.neurons}], got {capacity}")
        self.layer, self.store, self.predictor = layer, store, predictor
        self.act_threshold, self.capacity, self.window = act_threshold, capacity, window
        self.max_gap = max_gap  # read up to this many unneeded neurons to join two reads
        self.buffer = store.buffer(capacity)
        neurons = store.neurons
        self.slot_of = np.full(neurons, -1, dtype=np.int64)  # neuron -> buffer row
        self.neuron_at = np.full(capacity, -1, dtype=np.int64)  # buffer row -> neuron
        self.last_used = np.zeros(capacity, dtype=np.int64)  # step that last needed the row
        self.used = 0  # rows in use: [0, used)
        self.step = 0

    def reset(self) -> None:
        self.slot_of[:] = -1
        self.used = 0

    def select(self, x: torch.Tensor) -> np.ndarray:
        """Neuron ids this token needs, sorted, at most ``capacity`` (best scores first)."""
        scores = self.predictor.scores(x)[0]  # [F]
        chosen = (scores >= self.predictor.threshold).nonzero().squeeze(1)
        if len(chosen) > self.capacity:
            chosen = scores.topk(self.capacity).indices
        return np.sort(chosen.numpy())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            return self._prefill(x)
        started = time.perf_counter()
        selected = self.select(x)
        selected_at, read_before = time.perf_counter(), self.store.read_seconds
        self.step += 1
        rows = self._windowed_rows(selected) if self.window > 0 else self._read_rows(selected)
        rows_at, read = time.perf_counter(), self.store.read_seconds - read_before
        out = self._compute(x, rows)
        clock = self.store.phase_seconds  # where a decoded token's FFN time goes
        clock["select"] += selected_at - started
        clock["read"] += read
        clock["window"] += rows_at - selected_at - read  # bookkeeping, deletes, gather
        clock["compute"] += time.perf_counter() - rows_at
        return out

    def _compute(self, x: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
        # rows: [K, R] records of the selected neurons in neuron order; x: [T, H]
        hidden = self.store.hidden
        rows = rows.float()  # fp16 bundles: widen the rows read, compute in fp32
        h = F.silu(F.linear(x, rows[:, :hidden])) * F.linear(x, rows[:, hidden:2 * hidden])  # [T, K]
        keep = h.abs() >= self.act_threshold
        if mask is not None:
            keep &= mask
        return (h * keep) @ rows[:, 2 * hidden:3 * hidden]  # [T, H]

    def _read_rows(self, selected: np.ndarray) -> torch.Tensor:
        self.store.read_runs(self.layer, runs_of(selected, 0), self.buffer)
        self.used = 0  # the buffer is scratch here
        return self.buffer.tensor[: len(selected)]

    def _windowed_rows(self, selected: np.ndarray) -> torch.Tensor:
        needed = np.zeros(self.store.neurons, dtype=bool)
        needed[selected] = True
        # Delete rows no token of the window used (and this token does not need).
        stale = np.flatnonzero(self.last_used[: self.used] <= self.step - self.window)
        self._delete(stale[~needed[self.neuron_at[stale]]])
        missing = selected[self.slot_of[selected] < 0]
        overflow = self.used + len(missing) - self.capacity
        if overflow > 0:  # window larger than the budget: drop least recently used rows
            live = np.flatnonzero(~needed[self.neuron_at[: self.used]])
            self._delete(live[np.argsort(self.last_used[live], kind="stable")[:overflow]])
        joined = fill_gaps(missing, self.slot_of < 0, self.max_gap)
        if self.used + len(joined) <= self.capacity:
            missing = joined
        first = self.used
        self.store.read_runs(self.layer, runs_of(missing, first), self.buffer)
        slots = np.arange(first, first + len(missing))
        self.slot_of[missing] = slots
        self.neuron_at[slots] = missing
        self.used += len(missing)
        self.last_used[slots] = self.step - self.window  # gap fillers: stale next token
        self.last_used[self.slot_of[selected]] = self.step
        # index_select, not tensor[idx]: advanced indexing is ~8x slower for these rows
        return torch.index_select(self.buffer.tensor, 0, torch.from_numpy(self.slot_of[selected]))  # [K, R]

    def _delete(self, slots: np.ndarray) -> None:
        """Delete rows by moving the last live rows into the freed ones (swap-with-last,
        done for all deleted rows at once): rows stay packed in [0, used)."""
        if len(slots) == 0:
            return
        keep_end = self.used - len(slots)
        self.slot_of[self.neuron_at[slots]] = -1
        holes = np.sort(slots[slots < keep_end])
        tail = np.ones(self.used - keep_end, dtype=bool)
        tail[slots[slots >= keep_end] - keep_end] = False
        movers = keep_end + np.flatnonzero(tail)  # live rows past the new end
        if len(holes):
            table = self.buffer.tensor
            table.index_copy_(0, torch.from_numpy(holes), table.index_select(0, torch.from_numpy(movers)))
            moved = self.neuron_at[movers]
            self.neuron_at[holes], self.slot_of[moved] = moved, holes
            self.last_used[holes] = self.last_used[movers]
        self.used = keep_end

    def _prefill(self, x: torch.Tensor) -> torch.Tensor:
        """A prompt: the union of the tokens' selections, in chunks of ``capacity`` neurons
        read through the buffer; each token uses only its own selection."""
        scores = self.predictor.scores(x)  # [T, F]
        chosen = scores >= self.predictor.threshold
        over = chosen.sum(1) > self.capacity
        if over.any():  # same cap as a single token: its best ``capacity`` neurons
            top = scores[over].topk(self.capacity, dim=1).indices
            chosen[over] = torch.zeros_like(chosen[over]).scatter_(1, top, True)
        union = chosen.any(0).nonzero().squeeze(1).numpy()
        self.reset()
        out = torch.zeros_like(x)
        for start in range(0, len(union), self.capacity):
            part = union[start:start + self.capacity]
            rows = self._read_rows(part)
            out += self._compute(x, rows, chosen[:, torch.from_numpy(part)])
        self.reset()  # the window starts empty after a prompt
        self.step += x.shape[0]
        return out

    @property
    def dram_bytes(self) -> int:
        return self.buffer.nbytes + self.predictor.nbytes
