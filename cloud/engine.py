"""The cloud engine: an asyncio loop that, each step, asks the scheduler what to run,
executes one batched forward for every running sequence on a model thread, samples,
and hands tokens to their requests. Generation streams and speculative verification
rounds share that loop, the paged KV cache and its prefix cache.

    step = schedule() -> runner.execute(batch) -> sample/accept -> deliver
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from tandem.cloud.block_manager import BlockPool
from tandem.cloud.metrics import EngineMetrics
from tandem.cloud.model_runner import ModelRunner
from tandem.cloud.sampler import (
    Acceptance, accept_by_rejection, accept_by_target_sampling, accept_greedy, accept_lenient,
    draft_scores, greedy_rows)
from tandem.cloud.scheduler import ScheduledSeq, Scheduler
from tandem.cloud.scheduler import Sequence as Seq
from tandem.cloud.sessions import SessionStore
from tandem.shared.backpressure import Backpressure, Work
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import InvalidArgument, ResourceExhausted
from tandem.shared.memory import release_free_memory
from tandem.shared.priority import lower_model_thread
from tandem.shared.sampling import SamplingParams, TokenSampler
from tandem.shared.tier_handler import GeneratedToken, TokenRequest
from tandem.v1 import common_pb2

_END = object()
# Most draft tokens one Verify may carry.
MAX_VERIFY_DRAFT = 64
# The engine returns freed heap memory to the OS (shared/memory.py) when it has been idle
# this long after a step, and between steps at most every TRIM_EVERY_S under steady load
# (a trim took ~7 ms after varied batches of the real model, ~0.1 ms with nothing to free).
IDLE_TRIM_AFTER_S = 2.0
TRIM_EVERY_S = 30.0


@dataclass(frozen=True)
class VerifyResult:
    accepted: int
    next_token: int
    cached_tokens: int
    computed_tokens: int
    draft_logprobs: tuple[float, ...] = ()
    draft_ranks: tuple[int, ...] = ()


@dataclass(eq=False, kw_only=True)
class EngineRequest:
    """The engine's side of one sequence: how to sample it and when it arrived."""

    seq: Seq
    sampler: TokenSampler
    num_prompt: int  # tokens before the first one this request produces or judges
    arrival: float = field(default_factory=time.monotonic)


@dataclass(eq=False, kw_only=True)
class GenerationRequest(EngineRequest):
    """A stream of sampled tokens, handed to the consumer through ``queue``."""

    job: TokenRequest  # the caller's request (its queue wait is reported back on it)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    max_tokens: int
    predicted_s: float | None = None  # what admission predicted it would take
    last_token_at: float = 0.0
    first_token_at: float = 0.0

    @property
    def num_output(self) -> int:
        return len(self.seq.tokens) - self.num_prompt


@dataclass(eq=False, kw_only=True)
class VerificationRequest(EngineRequest):
    """One speculative round: the draft after the session's context, judged in one step;
    the result goes to ``future``."""

    future: asyncio.Future
    draft: list[int]
    draft_probs: list[np.ndarray] | None
    session_key: tuple[str, str]
    leniency: float = 0.0  # token-level deferral (greedy only); 0: lossless
    score_draft: bool = False  # also return the target's judgement of each draft token


class CloudEngine:
    def __init__(self, runner: ModelRunner, block_size: int, max_num_seqs: int,
                 max_batched_tokens: int, backpressure: Backpressure, sessions: SessionStore,
                 stop_token_ids: Sequence[int] = (), prefix_caching: bool = True,
                 metrics: EngineMetrics | None = None) -> None:
        self.runner = runner
        self.pool = BlockPool(runner.num_blocks, block_size)
        self.sessions = sessions
        self.scheduler = Scheduler(self.pool, max_num_seqs, max_batched_tokens,
                                   prefix_caching, reclaim=self._reclaim)
        sessions.on_evict = self.scheduler.free_blocks
        self.backpressure = backpressure
        self.stop_token_ids = frozenset(stop_token_ids)
        self.metrics = metrics or EngineMetrics()
        self._requests: dict[int, EngineRequest] = {}
        self._aborted: set[int] = set()
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        # One thread: steps run one at a time and each uses every torch thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud-model",
                                            initializer=lower_model_thread)
        self._stepped_since_trim = False
        self._trimmed_at = time.monotonic()

    # ----- entry points -------------------------------------------------------------
    async def generate(self, job: TokenRequest) -> AsyncIterator[GeneratedToken]:
        """Stream sampled tokens continuing ``job.prompt_ids`` until max_tokens, a stop
        token, or the consumer closes the iterator (which frees the KV at the next step).
        The prefix cache is salted by ``job.tenant``: tenants never share cached KV."""
        prompt_ids, sampler = job.prompt_ids, job.sampler
        predicted_s = self._admit_check(self.backpressure.generation(
            len(prompt_ids), self.scheduler.max_batched_tokens, sampler.params.max_tokens, 0,
            job.deadline, job.tenant))
        sampler.set_prompt(prompt_ids)
        seq = Seq(job.tenant, list(prompt_ids), committed=len(prompt_ids))
        request = GenerationRequest(seq=seq, sampler=sampler, num_prompt=len(prompt_ids),
                                    max_tokens=sampler.params.max_tokens, job=job,
                                    predicted_s=predicted_s)
        self._submit(request)
        try:
            while True:
                item = await request.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._abort(request)

    async def verify(self, tenant: str, session_id: str, tokens: Sequence[int],
                     draft: Sequence[int], sampling: SamplingParams,
                     draft_probs: list[np.ndarray] | None = None,
                     deadline: Deadline | None = None, leniency: float = 0.0,
                     score_draft: bool = False) -> VerifyResult:
        """Score ``draft`` after ``tokens`` in one scheduled step, reusing the session's KV
        (and the tenant's prefix cache); rejected positions' KV is rolled back."""
        key = (tenant, session_id)
        if key not in self.sessions:
            # A session already holding KV is an answer under way (its tokens may be
            # streamed): its next round is not refused, or the work done so far is lost.
            self._admit_check(self._pass(len(tokens) + len(draft), deadline, tenant))
        seq = self._session_sequence(key, tokens, draft)
        request = VerificationRequest(
            seq=seq, sampler=TokenSampler(sampling), num_prompt=len(tokens),
            future=asyncio.get_running_loop().create_future(), draft=list(draft),
            draft_probs=draft_probs, session_key=key, leniency=leniency,
            score_draft=score_draft)
        self._submit(request)
        try:
            return await request.future
        finally:
            self._abort(request)

    def end_session(self, tenant: str, session_id: str) -> bool:
        dropped = self.sessions.drop(tenant, session_id)
        # Outside the loop, which refreshes the gauges only when it wakes: the KV gauge
        # went on counting an ended session's blocks while the engine sat idle.
        self._update_gauges()
        return dropped

    def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ----- admission ----------------------------------------------------------------
    def _work(self, seqs: Sequence[Seq]) -> list[Work]:
        """What each of ``seqs`` still needs of the model (for admission)."""
        works = []
        for seq in seqs:
            request = self._requests.get(seq.seq_id)
            if isinstance(request, GenerationRequest):
                works.append(self.backpressure.generation(
                    max(seq.num_uncomputed - 1, 0), self.scheduler.max_batched_tokens,
                    request.max_tokens, request.num_output, request.job.deadline, seq.tenant))
            elif request is not None:  # a Verify round: its uncomputed tokens in one pass
                works.append(self._pass(seq.num_uncomputed, tenant=seq.tenant))
        return works

    def _pass(self, tokens: int, deadline: Deadline | None = None, tenant: str = "") -> Work:
        """A verification round: ``tokens`` evaluated in as few steps as they fit."""
        return Work(tokens, max(-(-tokens // self.scheduler.max_batched_tokens), 1), deadline,
                    tenant)

    def _admit_check(self, work: Work) -> float | None:
        """Admit ``work`` or raise ResourceExhausted; the seconds it is predicted to take."""
        try:
            return self.backpressure.admit(work, self._work(self.scheduler.running),
                                           self._work(self.scheduler.waiting))
        except ResourceExhausted:
            self.metrics.rejected.inc()
            raise

    def load(self) -> common_pb2.TierLoad:
        return self.backpressure.load(self._work(self.scheduler.running),
                                      self._work(self.scheduler.waiting))

    def _session_sequence(self, key: tuple[str, str], tokens: Sequence[int],
                          draft: Sequence[int]) -> Seq:
        """The session's cached sequence cut to the reusable prefix of ``tokens`` (always
        recomputing the last one, whose logits score the first draft), or a new one."""
        seq = self.sessions.take(key)
        if seq is None:
            seq = Seq(key[0], [], committed=0)
        else:
            common = _common_prefix(seq.tokens[:seq.num_computed], tokens)
            self.scheduler.truncate(seq, min(common, len(tokens) - 1))
            seq.first_scheduled = None
        seq.tokens = list(tokens) + list(draft)
        seq.committed = len(tokens)
        seq.num_logits = len(draft) + 1
        return seq

    def _submit(self, request: EngineRequest) -> None:
        self._requests[request.seq.seq_id] = request
        self.scheduler.add(request.seq)
        self._ensure_loop()
        assert self._wakeup is not None
        self._wakeup.set()

    def _abort(self, request: EngineRequest) -> None:
        """Called when a request's consumer is gone; the loop frees it before its next
        step (never during one, while the runner may read its block table)."""
        # Identity, not id: a session's sequence may already serve its next round.
        if self._requests.get(request.seq.seq_id) is request:
            self._aborted.add(request.seq.seq_id)
            if self._wakeup is not None:
                self._wakeup.set()

    def _reclaim(self, needed: int) -> bool:
        return self.sessions.evict_oldest()

    # ----- the loop -----------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            self._reap_aborted()
            began = time.monotonic()
            out = self.scheduler.schedule() if self.scheduler.has_work() else None
            self._update_gauges()
            if out is None or not out.scheduled:
                if out is not None and not self.scheduler.running:
                    self._fail_unschedulable()
                    continue
                self._wakeup.clear()
                if self._stepped_since_trim:
                    await self._trim_when_idle(loop)
                else:
                    await self._wakeup.wait()
                continue
            self._stepped_since_trim = True
            self.metrics.preemptions.inc(len(out.preempted))
            try:
                results = await loop.run_in_executor(self._executor, self._execute,
                                                     out.scheduled)
            except Exception as exc:  # noqa: BLE001 - each affected request gets the error
                for item in out.scheduled:
                    request = self._requests.get(item.seq.seq_id)
                    if request is not None:
                        self._finish(request, exc)
                continue
            self.scheduler.after_step(out.scheduled)
            self.metrics.steps.inc()
            for item, result in zip(out.scheduled, results):
                if result is not None:
                    self._deliver(self._requests[item.seq.seq_id], result)
            self.backpressure.stepped(sum(item.num_tokens for item in out.scheduled),
                                      time.monotonic() - began)
            if time.monotonic() - self._trimmed_at > TRIM_EVERY_S:
                await self._trim(loop)

    async def _trim_when_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for work; if none comes within IDLE_TRIM_AFTER_S, trim."""
        assert self._wakeup is not None
        try:
            await asyncio.wait_for(self._wakeup.wait(), IDLE_TRIM_AFTER_S)
        except asyncio.TimeoutError:
            await self._trim(loop)

    async def _trim(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the memory finished batches freed back to the OS, on the model thread."""
        self._stepped_since_trim = False
        self._trimmed_at = time.monotonic()
        await loop.run_in_executor(self._executor, release_free_memory)

    def _execute(self, scheduled: list[ScheduledSeq]) -> list[object]:
        """Model thread: one forward for the whole batch, then sampling per request. A
        request whose sampling fails (its own values) gets its exception as its result;
        the others in the batch go on."""
        logits = self.runner.execute(scheduled)  # [sum num_logits, V]
        generating = [not isinstance(self._requests[item.seq.seq_id], VerificationRequest)
                      for item in scheduled for _ in range(item.num_logits)]
        greedy_tokens, greedy_logprobs = greedy_rows(logits, generating)
        results: list[object] = []
        row = 0
        for item in scheduled:
            request = self._requests[item.seq.seq_id]
            n = item.num_logits
            try:
                results.append(self._result(request, logits[row:row + n],
                                            greedy_tokens[row:row + n],
                                            greedy_logprobs[row:row + n]))
            except Exception as exc:  # noqa: BLE001 - this request's failure, delivered to it
                results.append(exc)
            row += n
        return results

    def _result(self, request: EngineRequest, logits: torch.Tensor, greedy_tokens: list[int],
                greedy_logprobs: list[float | None]) -> object:
        """One request's outcome of a step, from its rows of logits ([n, V])."""
        if len(logits) == 0:
            return None
        if isinstance(request, VerificationRequest):
            return self._accept(request, logits, greedy_tokens)
        if request.sampler.params.greedy and not request.sampler.params.has_penalties:
            return GeneratedToken(greedy_tokens[0], greedy_logprobs[0])
        token, logprob, _ = request.sampler.sample(logits[0].numpy())
        return GeneratedToken(token, logprob)

    def _accept(self, request: VerificationRequest, logits: torch.Tensor,
                greedy: list[int]) -> Acceptance:
        # logits: [k+1, V] at the last context token and each draft
        acceptance = self._acceptance(request, logits, greedy)
        if request.score_draft:
            logprobs, ranks = draft_scores(request.draft, logits)
            return replace(acceptance, draft_logprobs=logprobs, draft_ranks=ranks)
        return acceptance

    def _acceptance(self, request: VerificationRequest, logits: torch.Tensor,
                    greedy: list[int]) -> Acceptance:
        if request.sampler.params.greedy:
            if request.leniency:
                return accept_lenient(request.draft, logits, request.leniency)
            return accept_greedy(request.draft, greedy)
        if request.draft_probs is not None:
            return accept_by_rejection(request.draft, logits.numpy(), request.sampler,
                                       request.draft_probs, request.sampler.rng)
        return accept_by_target_sampling(request.draft, logits.numpy(), request.sampler)

    def _deliver(self, request: EngineRequest, result: object) -> None:
        if request.seq.seq_id in self._aborted:
            return
        if isinstance(result, Exception):
            self._finish(request, result)
        elif isinstance(request, VerificationRequest):
            assert isinstance(result, Acceptance)
            self._deliver_verify(request, result)
        else:
            assert isinstance(request, GenerationRequest) and isinstance(result, GeneratedToken)
            self._deliver_token(request, result)

    def _deliver_token(self, request: GenerationRequest, token: GeneratedToken) -> None:
        seq, now = request.seq, time.monotonic()
        seq.tokens.append(token.token)
        seq.committed = len(seq.tokens)
        if request.num_output == 1:
            request.first_token_at = now
            self.metrics.ttft.observe(now - request.arrival)
            request.job.waited_s = (seq.first_scheduled or now) - request.arrival
            self.metrics.queue_time.observe(request.job.waited_s)
            self.backpressure.started(request.job.waited_s)
        else:
            self.metrics.itl.observe(now - request.last_token_at)
        request.last_token_at = now
        request.queue.put_nowait(token)
        if request.num_output >= request.max_tokens or token.token in self.stop_token_ids:
            self._finish(request, _END)

    def _deliver_verify(self, request: VerificationRequest, result: Acceptance) -> None:
        seq = request.seq
        self.metrics.spec_drafts.inc()
        self.metrics.spec_draft_tokens.inc(len(request.draft))
        self.metrics.spec_accepted.inc(result.accepted)
        context = request.num_prompt
        verified = VerifyResult(result.accepted, result.next_token, seq.num_cached,
                                len(seq.tokens) - seq.num_cached, result.draft_logprobs,
                                result.draft_ranks)
        self.scheduler.finish(seq, keep_blocks=True)
        self._requests.pop(seq.seq_id, None)
        # Keep the KV of the context and the accepted drafts; roll back the rest.
        seq.committed = context + result.accepted
        self.scheduler.truncate(seq, seq.committed)
        self.scheduler.register_blocks(seq)
        self.sessions.put(request.session_key, seq)
        self.metrics.e2e.observe(time.monotonic() - request.arrival)
        if not request.future.done():
            request.future.set_result(verified)

    def _finish(self, request: EngineRequest, outcome: object) -> None:
        """End a request: free its sequence and wake its consumer with ``outcome``
        (_END or an exception)."""
        self._requests.pop(request.seq.seq_id, None)
        self.scheduler.finish(request.seq)
        self.metrics.e2e.observe(time.monotonic() - request.arrival)
        if isinstance(request, GenerationRequest):
            if outcome is _END:
                self.backpressure.generated(request.num_output, request.max_tokens)
            self.backpressure.ended(request.predicted_s, time.monotonic() - request.arrival,
                                    finished=outcome is _END)
            if request.num_output > 1:
                self.metrics.tpot.observe((request.last_token_at - request.first_token_at)
                                          / (request.num_output - 1))
            request.queue.put_nowait(outcome)
        elif isinstance(request, VerificationRequest) and not request.future.done():
            request.future.set_exception(outcome if isinstance(outcome, BaseException)
                                         else RuntimeError("verification ended"))

    def _reap_aborted(self) -> None:
        for seq_id in self._aborted:
            request = self._requests.pop(seq_id, None)
            if request is not None:
                self.scheduler.finish(request.seq)
                if isinstance(request, GenerationRequest):  # its caller or deadline left
                    self.backpressure.ended(request.predicted_s,
                                            time.monotonic() - request.arrival, finished=False)
                if isinstance(request, VerificationRequest) and not request.future.done():
                    request.future.cancel()
        self._aborted.clear()

    def _fail_unschedulable(self) -> None:
        """Nothing runs and the head of the queue still does not fit: it never will."""
        seq = self.scheduler.waiting[0]
        self._finish(self._requests[seq.seq_id], ResourceExhausted(
            f"request needs more KV cache than the pool holds ({self.pool.num_blocks} blocks)"))

    def _update_gauges(self) -> None:
        m = self.metrics
        m.running.set(len(self.scheduler.running))
        m.waiting.set(len(self.scheduler.waiting))
        m.kv_usage.set(self.pool.usage())
        m.kv_waste.set(self.scheduler.kv_waste())
        stats = self.pool.stats
        m.prefix_queries.inc(stats.queries)
        m.prefix_hits.inc(stats.hits)
        stats.queries = stats.hits = 0


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def validate_verify(tokens: Sequence[int], draft: Sequence[int], draft_probs: Sequence[float],
                    num_distributions: int, session_id: str, vocab_size: int,
                    context_window: int, sampling: SamplingParams, max_draft: int = MAX_VERIFY_DRAFT,
                    leniency: float = 0.0) -> None:
    """Checks of a Verify request before any model work; raises InvalidArgument."""
    if not session_id:
        raise InvalidArgument("session_id: required for Verify")
    if not tokens:
        raise InvalidArgument("tokens: must not be empty")
    if len(draft) > max_draft:
        raise InvalidArgument(f"draft_tokens: at most {max_draft}, got {len(draft)}")
    if any(not 0 <= t < vocab_size for t in list(tokens) + list(draft)):
        raise InvalidArgument(f"tokens: ids must be in [0, {vocab_size})")
    if len(tokens) + len(draft) + 1 > context_window:
        raise InvalidArgument(f"tokens: sequence exceeds the context window of {context_window}")
    if draft_probs and len(draft_probs) != len(draft):
        raise InvalidArgument("draft_probs: one per draft token")
    if num_distributions and num_distributions != len(draft):
        raise InvalidArgument(
            f"draft_distributions: one per draft token ({len(draft)}), got {num_distributions}")
    if sampling.has_penalties:
        raise InvalidArgument(
            "sampling: repetition/presence/frequency penalties are not supported in Verify")
    if not (math.isfinite(leniency) and 0.0 <= leniency <= 1.0):
        raise InvalidArgument(f"leniency: must be in [0, 1], got {leniency}")
    if leniency and not sampling.greedy:
        raise InvalidArgument("leniency: token-level deferral needs greedy sampling "
                              "(temperature 0)")
