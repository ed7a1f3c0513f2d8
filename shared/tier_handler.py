"""The Generate/GenerateStream behaviour shared by the edge and cloud services.

A tier backend only turns prompt token ids into a stream of sampled tokens; this module
validates requests, renders prompts, detokenizes, applies stop strings and max_tokens,
and builds the protobuf replies, identically for both tiers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter

from tandem.shared.deadlines import Deadline
from tandem.shared.errors import InvalidArgument
from tandem.shared.limits import RequestLimits
from tandem.shared.prompting import PromptInput, max_token_bytes, render_off_loop
from tandem.shared.sampling import SamplingParams, TokenSampler
from tandem.shared.text import AnswerText
from tandem.v1 import common_pb2

if TYPE_CHECKING:
    from tandem.shared.backpressure import Backpressure
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class GeneratedToken:
    token: int
    logprob: float
    entropy: float = 0.0  # of the raw distribution; reported when the sampler asks for it


@dataclass(eq=False)
class TokenRequest:
    """One generation as a tier backend sees it."""

    prompt_ids: Sequence[int]
    sampler: TokenSampler
    tenant: str = ""  # whom it is for: a cache shared across requests is salted by it
    deadline: Deadline | None = None  # refused up front when its wait would outlast it
    waited_s: float = 0.0  # set by the backend: time queued before the model started on it


# Tokens a tier generates for itself before it serves.
WARM_UP_TOKENS = 4


async def warm_up(generator: TokenGenerator, backpressure: Backpressure | None,
                  token_id: int) -> None:
    """One short generation before a tier serves: its steps are timed for admission (a
    cold tier cannot predict, and one that took a burst up to its queue's length let all
    of it time out: 48 of 48 cloud requests under a 4x overload) and the first user
    request does not pay first-call allocations. Its length says nothing of users'
    answers: it is forgotten."""
    request = TokenRequest([token_id], TokenSampler(SamplingParams(max_tokens=WARM_UP_TOKENS)),
                           tenant="tandem-warm-up")
    async for _ in generator.generate(request):
        pass
    if backpressure is not None:  # an engine that schedules itself has none
        backpressure.forget_lengths()


class TokenGenerator(Protocol):
    """What a tier backend provides: sampled tokens continuing ``request.prompt_ids``.

    The generator runs until the consumer stops iterating (closing it must stop the model
    work and free the request's state). A backend that cannot serve the request in time
    raises ResourceExhausted before any model work.
    """

    def generate(self, request: TokenRequest) -> AsyncIterator[GeneratedToken]: ...


class TierMetrics:
    """Requests, generated tokens and forward passes of a model tier, by method."""

    def __init__(self, tier: str, registry: CollectorRegistry) -> None:
        self.requests = Counter(f"tandem_{tier}_requests", f"{tier} RPCs by method.", ["method"],
                                registry=registry)
        self.tokens = Counter(f"tandem_{tier}_generated_tokens",
                              f"Tokens the {tier} model produced, by method.", ["method"],
                              registry=registry)
        self.forward_passes = Counter(f"tandem_{tier}_forward_passes",
                                      f"Forward passes of the {tier} model, by method.",
                                      ["method"], registry=registry)

    def count(self, method: str, tokens: int, forward_passes: int) -> None:
        self.tokens.labels(method).inc(tokens)
        self.forward_passes.labels(method).inc(forward_passes)


class TierGenerateHandler:
    """Runs TierGenerateRequests against a backend, counting them in ``metrics``."""

    def __init__(self, backend: TokenGenerator, tokenizer: PreTrainedTokenizerBase,
                 limits: RequestLimits, eos_token_ids: Sequence[int], metrics: TierMetrics) -> None:
        self.backend = backend
        self.metrics = metrics
        self.tokenizer = tokenizer
        self.limits = limits
        self.eos_token_ids = frozenset(eos_token_ids)
        self.bytes_per_token = max_token_bytes(tokenizer)

    async def prepare(self, request: common_pb2.TierGenerateRequest
                      ) -> tuple[list[int], SamplingParams]:
        """Validate and render a request before any model work; raises InvalidArgument."""
        sampling = SamplingParams.from_pb(
            request.sampling, default_max_tokens=self.limits.default_max_tokens,
            max_tokens_cap=self.limits.max_tokens_cap)
        prompt = PromptInput.from_pb(request, vocab_size=len(self.tokenizer))
        prompt.check_size(self.limits.context_window, self.bytes_per_token)
        prompt_ids = await render_off_loop(self.tokenizer, prompt)
        check_context(len(prompt_ids), sampling.max_tokens, self.limits.context_window)
        return prompt_ids, sampling

    async def stream(self, request: common_pb2.TierGenerateRequest,
                     deadline: Deadline | None = None
                     ) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        """The answer as chunks; the last one has the finish reason and accounting."""
        self.metrics.requests.labels("GenerateStream").inc()
        async for chunk in self._chunks(request, deadline):
            self.metrics.count("GenerateStream", len(chunk.token_ids), chunk.forward_passes)
            yield chunk

    async def _chunks(self, request: common_pb2.TierGenerateRequest, deadline: Deadline | None
                      ) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        started = time.perf_counter_ns()
        prompt_ids, sampling = await self.prepare(request)
        answer = AnswerText(lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
                            sampling.stop, sampling.max_tokens, self.eos_token_ids)
        produced, first_token_ns = 0, 0
        job = TokenRequest(prompt_ids, TokenSampler(sampling, report_entropy=request.logprobs),
                           request.tenant, deadline)
        tokens = self.backend.generate(job)
        try:
            async for item in tokens:
                text = answer.push(item.token)
                if text is None:  # an end token
                    break
                produced += 1
                first_token_ns = first_token_ns or time.perf_counter_ns() - started
                chunk = common_pb2.TierGenerateChunk(token_ids=[item.token], text=text)
                if request.logprobs:
                    chunk.logprobs.append(item.logprob)
                    chunk.entropies.append(item.entropy)
                yield chunk
                if answer.done:
                    break
        finally:
            await tokens.aclose()
        yield common_pb2.TierGenerateChunk(
            text=answer.flush(), prompt_tokens=len(prompt_ids),
            # The backend ends at max_tokens, so an answer no rule ended ran to its length.
            finish_reason=answer.finish_reason or common_pb2.FINISH_REASON_LENGTH,
            # One prefill pass, then one pass per token after the first.
            forward_passes=max(produced, 1),
            timings=common_pb2.Timings(first_token_ns=first_token_ns,
                                       total_ns=time.perf_counter_ns() - started,
                                       queue_ns=int(job.waited_s * 1e9)))

    async def generate(self, request: common_pb2.TierGenerateRequest,
                       deadline: Deadline | None = None) -> common_pb2.TierGenerateResponse:
        """The whole answer in one response."""
        self.metrics.requests.labels("Generate").inc()
        response = common_pb2.TierGenerateResponse()
        parts: list[str] = []
        async for chunk in self._chunks(request, deadline):
            parts.append(chunk.text)
            response.token_ids.extend(chunk.token_ids)
            response.logprobs.extend(chunk.logprobs)
            response.entropies.extend(chunk.entropies)
            if chunk.finish_reason:
                response.finish_reason = chunk.finish_reason
                response.prompt_tokens = chunk.prompt_tokens
                response.forward_passes = chunk.forward_passes
                response.timings.CopyFrom(chunk.timings)
        response.text = "".join(parts)
        self.metrics.count("Generate", len(response.token_ids), response.forward_passes)
        return response


def check_context(prompt_tokens: int, max_tokens: int, context_window: int) -> None:
    if prompt_tokens >= context_window:
        raise InvalidArgument(
            f"prompt: {prompt_tokens} tokens do not fit the context window of {context_window}")
    if prompt_tokens + max_tokens > context_window:
        raise InvalidArgument(
            f"max_tokens: prompt ({prompt_tokens}) + max_tokens ({max_tokens}) exceeds the "
            f"context window of {context_window}")
