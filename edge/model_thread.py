"""A backend with one model context holding one sequence, used by one request at a time
(the others wait in a bounded queue), reusing the KV of the longest common prefix with
the previous call (so a rejected draft is rolled back, never re-processed)."""

from __future__ import annotations

import asyncio
import threading
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from tandem.edge.backend import DraftResult, EdgeBackend
from tandem.shared.backpressure import Backpressure
from tandem.shared.sampling import TokenSampler
from tandem.shared.tier_handler import GeneratedToken, TokenRequest
from tandem.v1 import common_pb2


def reusable_prefix(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """Tokens of ``cached`` that ``tokens`` starts with, keeping the last token of
    ``tokens`` to re-run (its logits are needed)."""
    reuse, limit = 0, min(len(cached), len(tokens) - 1)
    while reuse < limit and cached[reuse] == tokens[reuse]:
        reuse += 1
    return reuse


# Tokens the model thread may evaluate beyond the one the consumer is handling.
RUN_AHEAD = 1


class ModelThreadBackend(EdgeBackend):
    """Generation and drafting over two model steps the subclass provides; model calls run
    on one worker thread so the event loop stays responsive."""

    #: Tokens after which generation ends (the model's end of sequence, where known): the
    #: model thread does not evaluate them, as no consumer wants what follows.
    end_ids: frozenset[int] = frozenset()

    def __init__(self, thread_name: str, backpressure: Backpressure | None = None) -> None:
        self._lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self.backpressure = backpressure or Backpressure("edge", 1, 8, CollectorRegistry())
        self._waiting = 0

    @asynccontextmanager
    async def _turn(self, request: TokenRequest) -> AsyncIterator[None]:
        """The model, once this request's turn comes; refused up front (RESOURCE_EXHAUSTED)
        when the queue is full or the wait would outlast the request's deadline."""
        self.backpressure.admit(self._waiting, int(self._lock.locked()), request.deadline)
        arrived = time.monotonic()
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        started = time.monotonic()
        request.waited_s = started - arrived
        self.backpressure.started(request.waited_s)
        try:
            yield
        finally:
            self._lock.release()
            self.backpressure.finished(time.monotonic() - started)

    def load(self) -> common_pb2.TierLoad:
        return self.backpressure.load(self._waiting, int(self._lock.locked()))

    @abstractmethod
    def _eval_after_prefix(self, tokens: Sequence[int]) -> tuple[int, np.ndarray]:
        """Make the context hold ``tokens``; returns (reused prefix length, last logits [V])."""

    @abstractmethod
    def _eval_one(self, token: int) -> np.ndarray:
        """Append ``token``; returns its logits [V]."""

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def generate(self, request: TokenRequest) -> AsyncIterator[GeneratedToken]:
        """The model thread samples and evaluates back to back and hands each token to the
        event loop, at most RUN_AHEAD token ahead of the consumer: a hop through the event
        loop per token cost 4 % of llama.cpp's decode speed here (144 against 149 tok/s).
        It stops after max_tokens, at an end token, or soon after the consumer stops."""
        async with self._turn(request):
            loop = asyncio.get_running_loop()
            ready: asyncio.Queue[GeneratedToken | BaseException | None] = asyncio.Queue()
            credits, stop = threading.Semaphore(RUN_AHEAD), threading.Event()
            loop.run_in_executor(self._executor, self._produce, request.prompt_ids,
                                 request.sampler,
                                 partial(loop.call_soon_threadsafe, ready.put_nowait),
                                 credits, stop)
            try:
                while (item := await ready.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    credits.release()  # the consumer is back for the next token
            finally:
                stop.set()
                credits.release()  # wake a model thread waiting for the consumer

    def _produce(self, prompt_ids: Sequence[int], sampler: TokenSampler,
                 publish: Callable[[GeneratedToken | BaseException | None], Any],
                 credits: threading.Semaphore, stop: threading.Event) -> None:
        """generate's model-thread side; ``publish`` hands an item to the event loop."""

        def send(item: GeneratedToken | BaseException | None) -> bool:
            try:
                publish(item)
                return True
            except RuntimeError:  # the consumer's event loop is closed: nobody to tell
                return False

        try:
            _, logits = self._eval_after_prefix(prompt_ids)
            for produced in range(1, sampler.params.max_tokens + 1):
                generated = GeneratedToken(*sampler.sample_with_entropy(logits))
                if not send(generated) or produced == sampler.params.max_tokens \
                        or generated.token in self.end_ids:
                    break
                credits.acquire()
                if stop.is_set():
                    return
                logits = self._eval_one(generated.token)
            send(None)
        except Exception as exc:  # raised in the consumer
            send(exc)

    async def draft(self, request: TokenRequest, num_tokens: int, stop_ids: frozenset[int],
                    want_distributions: bool = False) -> DraftResult:
        cancelled = threading.Event()
        async with self._turn(request):
            try:
                return await self._run(self.draft_sync, request.prompt_ids, num_tokens,
                                       request.sampler, stop_ids, want_distributions, cancelled)
            except asyncio.CancelledError:
                # The model thread finishes its current token, not the whole draft: the
                # next call waits for that thread (e.g. after a pipelined draft the
                # router no longer needs).
                cancelled.set()
                raise

    def draft_sync(self, tokens: Sequence[int], num_tokens: int, sampler: TokenSampler,
                   stop_ids: frozenset[int], want_distributions: bool = False,
                   cancelled: threading.Event | None = None) -> DraftResult:
        reuse, logits = self._eval_after_prefix(tokens)
        computed = len(tokens) - reuse
        drafted: list[int] = []
        probs: list[float] = []
        distributions: list[np.ndarray] = []
        for i in range(num_tokens):
            token, _, prob, dist = sampler.sample_with_distribution(logits)
            drafted.append(token)
            probs.append(prob)
            if want_distributions and dist is not None:
                distributions.append(dist.astype(np.float32))
            if token in stop_ids or i == num_tokens - 1 or (cancelled and cancelled.is_set()):
                break
            logits = self._eval_one(token)
            computed += 1
        return DraftResult(drafted, probs, reuse, computed, distributions or None)
