"""Parallel slots, as llama.cpp's server has them: N sequences share one model, and every
step evaluates the next token of each active slot in one batched call.

A request (a generation or a Draft) takes a free slot, preferring the one whose cached
tokens share the longest prefix with it (a returning session, a shared system prompt), and
keeps its KV there; only the rest of its prompt is evaluated, in chunks that share steps
with the other slots' tokens. With every slot busy, requests wait in a bounded queue
(shared/backpressure.py): beyond ``max_waiting``, or when the wait would outlast their
deadline, they are refused before any model work. A Draft goes to the head of the queue:
it is a few tokens of a request already under way, whose cloud session waits on it.

The scheduler runs on one model thread; the event loop only submits, consumes and cancels.

    step = pick slots for waiting jobs -> one model.evaluate(batch) -> each job samples
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tandem.edge.backend import DraftResult, EdgeBackend
from tandem.edge.slot_jobs import DraftJob, GenerationJob, Job, common_prefix
from tandem.shared.backpressure import Backpressure, Work, fair_place
from tandem.shared.errors import Cancelled
from tandem.shared.priority import lower_model_thread
from tandem.shared.tier_handler import GeneratedToken, TokenRequest, warm_up
from tandem.v1 import common_pb2

# A request's prompt is evaluated in chunks of this many tokens, one per step, beside the
# other slots' next tokens: a long prompt does not hold them up for its whole time. The
# chunks are the same however busy the slots are (a chunk that does not fit a step waits
# for the next), because llama.cpp rounds a prompt evaluated in other chunks differently:
# so a request gets the same tokens at any concurrency.
PREFILL_CHUNK = 256


@dataclass(frozen=True)
class SlotInput:
    """Tokens to append to a slot, starting at position ``start``; the logits of the last
    one are wanted."""

    slot: int
    tokens: list[int]
    start: int


class SlotModel(Protocol):
    """A model holding ``slots`` sequences (model thread only)."""

    slots: int
    vocab_size: int
    batch_tokens: int  # most tokens one evaluate call takes (>= PREFILL_CHUNK + slots)

    def evaluate(self, batch: list[SlotInput]) -> list[np.ndarray]:
        """Append each input's tokens to its slot in one call; the logits after each
        input's last token ([V] each, valid until the next call)."""

    def forget(self, slot: int, keep: int) -> None:
        """Drop the slot's KV from position ``keep`` on."""

    def close(self) -> None: ...


@dataclass
class Slot:
    index: int
    cached: list[int] = field(default_factory=list)  # the tokens whose KV the slot holds
    tenant: str = ""  # whose they are: a slot's cache is reused only by the same tenant
    job: Job | None = None
    last_used: float = 0.0


class SlotScheduler:
    """Runs jobs on a SlotModel's slots from one model thread."""

    def __init__(self, model: SlotModel, backpressure: Backpressure,
                 thread_name: str = "edge-slots") -> None:
        self.model = model
        self.backpressure = backpressure
        self.slots = [Slot(i) for i in range(model.slots)]
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    # ----- event-loop side ----------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue ``job``, or refuse it (ResourceExhausted) when it cannot be served in time."""
        with self._cond:
            # A draft (a few tokens of a request already under way) goes first; the rest
            # where their tenant's fair share puts them.
            draft = isinstance(job, DraftJob)
            job.predicted_s = self.backpressure.admit(
                job.work(self.backpressure, PREFILL_CHUNK), *self._work(),
                place=0 if draft else None)
            job.arrived = time.monotonic()
            self._waiting.insert(0 if draft else fair_place(
                job.tenant, [j.tenant for j in self._live()], [j.tenant for j in self._waiting]),
                job)
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _live(self) -> list[Job]:
        """Jobs on a slot serving a live request (one that ended or was cancelled is freed
        at the model thread's next step)."""
        return [slot.job for slot in self.slots if slot.job is not None
                and not slot.job.finished and not slot.job.cancelled.is_set()]

    @property
    def running(self) -> int:
        return len(self._live())

    def _work(self) -> tuple[list[Work], list[Work]]:
        """What the running and the waiting jobs still need (under ``_cond``)."""
        return ([job.work(self.backpressure, PREFILL_CHUNK) for job in self._live()],
                [job.work(self.backpressure, PREFILL_CHUNK) for job in self._waiting
                 if not job.cancelled.is_set()])

    def load(self) -> common_pb2.TierLoad:
        with self._cond:
            return self.backpressure.load(*self._work())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    # ----- model thread -------------------------------------------------------------
    def _run(self) -> None:
        lower_model_thread()
        while True:
            with self._cond:
                batch = self._next_batch()
                while not batch and not self._closed:
                    self._cond.wait()
                    batch = self._next_batch()
                if self._closed:
                    return
            self._step(batch)

    def _next_batch(self) -> list[tuple[Slot, SlotInput]]:
        """Seat waiting jobs, free cancelled ones, and collect the step's inputs."""
        for slot in self.slots:
            if slot.job is not None and (slot.job.cancelled.is_set() or slot.job.finished):
                self._release(slot)
        while self._waiting and any(slot.job is None for slot in self.slots):
            job = self._waiting.popleft()
            if not job.cancelled.is_set():
                self._seat(job)
        busy = [slot for slot in self.slots if slot.job is not None]
        batch = []
        for slot in busy:  # every decoding slot's next token first
            assert slot.job is not None
            if not slot.job.in_prompt and (token := slot.job.next_token()):
                batch.append((slot, SlotInput(slot.index, token, slot.job.evaluated)))
        room = self.model.batch_tokens - len(batch)
        for slot in busy:  # then whole prompt chunks, as many as the batch holds
            assert slot.job is not None
            if slot.job.in_prompt:
                chunk = slot.job.prompt_chunk(PREFILL_CHUNK)
                if len(chunk) <= room:
                    batch.append((slot, SlotInput(slot.index, chunk, slot.job.evaluated)))
                    room -= len(chunk)
        return batch

    def _seat(self, job: Job) -> None:
        """Put ``job`` on the free slot whose cache serves it best (the longest prefix of
        its own tenant; else the least recently used), keeping that prefix's KV."""
        free = [slot for slot in self.slots if slot.job is None]
        slot = max(free, key=lambda s: (common_prefix(s.cached, job.sequence)
                                        if s.tenant == job.tenant else 0, -s.last_used))
        keep = common_prefix(slot.cached, job.sequence) if slot.tenant == job.tenant else 0
        keep = min(keep, len(job.sequence) - 1)  # the last token's logits are needed
        self.model.forget(slot.index, keep)
        del slot.cached[keep:]
        slot.tenant, slot.job = job.tenant, job
        job.evaluated = job.reused = keep
        job.started = time.monotonic()
        job.request.waited_s = job.started - job.arrived
        self.backpressure.started(job.request.waited_s)

    def _release(self, slot: Slot) -> None:
        job = slot.job
        assert job is not None
        # Whether it ended on its own; a cancelled one's length says nothing of answers'
        # (200 streams cancelled after their first token had admission expect 2-token
        # answers, and the next admitted edge requests took 12-16x their prediction).
        completed = job.finished
        if not completed:  # its consumer is gone; tell it anyway, in case it is not
            job.fail(Cancelled("edge: the request was cancelled"))
        if isinstance(job, GenerationJob) and completed:
            self.backpressure.generated(job.produced, job.request.sampler.params.max_tokens)
        self.backpressure.ended(job.predicted_s, time.monotonic() - job.arrived, completed)
        slot.job, slot.last_used = None, time.monotonic()

    def _step(self, batch: list[tuple[Slot, SlotInput]]) -> None:
        began = time.monotonic()
        try:
            logits = self.model.evaluate([item for _, item in batch])
        except Exception as exc:  # noqa: BLE001 - the model failed: every job in the step
            for slot, _ in batch:
                self.model.forget(slot.index, 0)
                slot.cached.clear()
                if slot.job is not None:
                    slot.job.fail(exc)
            return
        for (slot, item), row in zip(batch, logits):
            job = slot.job
            assert job is not None
            slot.cached.extend(item.tokens)
            job.evaluated += len(item.tokens)
            if job.evaluated < len(job.sequence):
                continue  # more of the prompt to go: these logits are not needed
            try:
                job.take_logits(row)
            except Exception as exc:  # noqa: BLE001 - this job's values failed it alone
                job.fail(exc)
        self.backpressure.stepped(sum(len(item.tokens) for _, item in batch),
                                  time.monotonic() - began)


class SlotBackend(EdgeBackend):
    """An edge backend over a SlotModel: generation and drafting on parallel slots."""

    def __init__(self, model: SlotModel, backpressure: Backpressure, end_ids: frozenset[int],
                 dtype: str) -> None:
        self.model = model
        self.slots = model.slots
        self.end_ids = end_ids
        self.dtype = dtype
        self.scheduler = SlotScheduler(model, backpressure)

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    async def generate(self, request: TokenRequest) -> AsyncIterator[GeneratedToken]:
        job = GenerationJob(request, asyncio.get_running_loop(), self.end_ids)
        job.on_ack = self.scheduler.wake
        self.scheduler.submit(job)
        try:
            while (item := await job.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
                job.ack()
        finally:
            job.cancel()  # a consumer that stops frees the slot at the next step
            self.scheduler.wake()

    async def draft(self, request: TokenRequest, num_tokens: int, stop_ids: frozenset[int],
                    want_distributions: bool = False) -> DraftResult:
        job = DraftJob(request, asyncio.get_running_loop(), num_tokens, stop_ids,
                       want_distributions)
        self.scheduler.submit(job)
        try:
            return await job.future
        finally:
            # cancelled: the slot stops after its current token (e.g. a pipelined draft
            # the router no longer needs)
            job.cancel()
            self.scheduler.wake()

    def load(self) -> common_pb2.TierLoad:
        return self.scheduler.load()

    async def warm_up(self, token_id: int) -> None:
        await warm_up(self, self.scheduler.backpressure, token_id)

    def close(self) -> None:
        self.scheduler.close()  # waits for a running step: freeing the model under it crashes
        self.model.close()
