"""The work a slot does for one request: generate a stream of tokens, or draft k tokens.

A job holds its request's state (sequence, sampler, what it has produced) and runs on the
model thread: the scheduler asks it for the tokens to evaluate next and hands it the
logits of its last position; the job samples, publishes to its consumer on the event loop,
and says whether it goes on. A job's failure (its sampling values) is its own: it ends
that job alone.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tandem.edge.backend import DraftResult
from tandem.shared.backpressure import Backpressure, Work
from tandem.shared.tier_handler import GeneratedToken, TokenRequest

# Tokens a generation may run ahead of its consumer: a hop through the event loop per token
# cost 4 % of llama.cpp's decode speed here (144 against 149 tok/s), so the model samples
# and evaluates back to back, at most this far ahead. With one, a job whose last token the
# loop had not yet taken when the next step was formed sat that step out, which costs
# most when slots are busy and the loop is slow: 4 streams of 64 tokens, alternating in
# one process, 155-159 tok/s with one against 162-169 with two.
RUN_AHEAD = 2


class Job(ABC):
    """One request on a slot. Model-thread methods: ``prompt_chunk``, ``next_token``,
    ``take_logits``, ``fail``; ``cancel`` may be called from any thread."""

    def __init__(self, request: TokenRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.loop = loop
        self.sequence = list(request.prompt_ids)  # everything the slot must hold
        self.evaluated = 0  # tokens of ``sequence`` whose KV the slot holds
        self.reused = 0  # of those, reused from what the slot held before
        self.arrived = 0.0
        self.predicted_s: float | None = None  # what admission predicted it would take
        self.started = 0.0
        self.cancelled = threading.Event()
        self.finished = False

    @property
    def tenant(self) -> str:
        return self.request.tenant

    @property
    def in_prompt(self) -> bool:
        """Whether part of the prompt is still to be evaluated."""
        return self.evaluated < len(self.request.prompt_ids)

    def prompt_chunk(self, size: int) -> list[int]:
        """The next at most ``size`` prompt tokens to evaluate."""
        return self.sequence[self.evaluated:min(self.evaluated + size,
                                                len(self.request.prompt_ids))]

    def next_token(self) -> list[int]:
        """After the prompt: the token sampled last, to evaluate next ([] to wait)."""
        return self.sequence[-1:]

    def cancel(self) -> None:
        self.cancelled.set()

    def prompt_left(self) -> int:
        return max(len(self.request.prompt_ids) - self.evaluated, 0)

    @abstractmethod
    def work(self, backpressure: Backpressure, chunk: int) -> Work:
        """What the job still needs of the model (for admission)."""

    @abstractmethod
    def take_logits(self, logits: np.ndarray) -> bool:
        """The logits after the job's last token ([V]); returns whether it goes on."""

    @abstractmethod
    def fail(self, error: BaseException) -> None:
        """End the job with ``error`` (delivered to its consumer)."""

    def _publish(self, deliver: Callable[..., Any], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(deliver, *args)
        except RuntimeError:  # the consumer's event loop is closed: nobody to tell
            self.cancelled.set()


class GenerationJob(Job):
    """Tokens until max_tokens or an end token; the consumer reads them from ``queue``
    (None ends the stream, an exception fails it) and calls ``ack`` for each."""

    def __init__(self, request: TokenRequest, loop: asyncio.AbstractEventLoop,
                 end_ids: frozenset[int]) -> None:
        super().__init__(request, loop)
        self.end_ids = end_ids
        self.queue: asyncio.Queue[GeneratedToken | BaseException | None] = asyncio.Queue()
        self.produced = 0
        self._credits = RUN_AHEAD
        self._credit_lock = threading.Lock()
        self.on_ack: Callable[[], None] = lambda: None  # wakes the scheduler

    def next_token(self) -> list[int]:
        with self._credit_lock:
            if self._credits == 0:  # the consumer has not taken the last one yet
                return []
            self._credits -= 1
        return self.sequence[-1:]

    def ack(self) -> None:
        """The consumer took a token: the model may run one further."""
        with self._credit_lock:
            self._credits += 1
        self.on_ack()

    def work(self, backpressure: Backpressure, chunk: int) -> Work:
        return backpressure.generation(self.prompt_left(), chunk,
                                       self.request.sampler.params.max_tokens, self.produced,
                                       self.request.deadline, self.tenant)

    def take_logits(self, logits: np.ndarray) -> bool:
        token = GeneratedToken(*self.request.sampler.sample_with_entropy(logits))
        self.produced += 1
        self._publish(self.queue.put_nowait, token)
        max_tokens = self.request.sampler.params.max_tokens
        if self.produced >= max_tokens or token.token in self.end_ids:
            self._end(None)
            return False
        self.sequence.append(token.token)
        return True

    def fail(self, error: BaseException) -> None:
        self._end(error)

    def _end(self, last: BaseException | None) -> None:
        self.finished = True
        self._publish(self.queue.put_nowait, last)


class DraftJob(Job):
    """Up to ``count`` sampled tokens after the sequence (ending at a stop token or when
    cancelled after the current one); the result goes to ``future``."""

    def __init__(self, request: TokenRequest, loop: asyncio.AbstractEventLoop, count: int,
                 stop_ids: frozenset[int], want_distributions: bool) -> None:
        super().__init__(request, loop)
        self.count = count
        self.stop_ids = stop_ids
        self.want_distributions = want_distributions
        self.context = len(self.sequence)
        self.future: asyncio.Future[DraftResult] = loop.create_future()
        self.tokens: list[int] = []
        self.probs: list[float] = []
        self.distributions: list[np.ndarray] = []

    def work(self, backpressure: Backpressure, chunk: int) -> Work:
        left = self.prompt_left()
        return Work(left, -(-left // chunk) + max(self.count - len(self.tokens), 0),
                    self.request.deadline, self.tenant)

    def take_logits(self, logits: np.ndarray) -> bool:
        token, _, prob, dist = self.request.sampler.sample_with_distribution(logits)
        self.tokens.append(token)
        self.probs.append(prob)
        if self.want_distributions and dist is not None:
            self.distributions.append(dist.astype(np.float32))
        if (len(self.tokens) >= self.count or token in self.stop_ids
                or self.cancelled.is_set()):
            self._resolve(DraftResult(self.tokens, self.probs, self.reused,
                                      self.evaluated - self.reused,
                                      self.distributions or None))
            return False
        self.sequence.append(token)
        return True

    def fail(self, error: BaseException) -> None:
        self._resolve(error)

    def _resolve(self, outcome: DraftResult | BaseException) -> None:
        self.finished = True

        def settle() -> None:
            if self.future.done():
                return
            if isinstance(outcome, BaseException):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)

        self._publish(settle)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
