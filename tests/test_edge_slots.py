"""Parallel slots on the real SmolLM2 GGUF: concurrent requests get exactly what they get
alone, drafts roll back inside one slot while the others decode, a cancelled request frees
its slot at once, and a full queue refuses before any work."""

from __future__ import annotations

import asyncio
import time

import pytest

from tandem.edge.llama_cpp_backend import LlamaCppBackend
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import ResourceExhausted
from tandem.shared.models import DEFAULT_MODEL, resolve_model
from tandem.shared.sampling import SamplingParams, TokenSampler
from tandem.shared.tier_handler import TokenRequest

pytestmark = pytest.mark.real_model

# Prompts of different lengths (5 to 90 tokens), so slots prefill different amounts.
PROMPTS = [list(range(1000 + 31 * i, 1000 + 31 * i + 5 + 17 * i)) for i in range(6)]


def greedy(prompt: list[int], n: int, tenant: str) -> TokenRequest:
    return TokenRequest(prompt, TokenSampler(SamplingParams(max_tokens=n)), tenant)


async def generate(backend: LlamaCppBackend, request: TokenRequest) -> list[int]:
    return [item.token async for item in backend.generate(request)]


def open_backend(slots: int, max_waiting: int = 16) -> LlamaCppBackend:
    return LlamaCppBackend.open(str(resolve_model(DEFAULT_MODEL).path), slots=slots,
                                context_window=512, threads=2, max_waiting=max_waiting)


def test_concurrent_slots_give_each_request_its_output_alone() -> None:
    """Four slots, six requests of different lengths at once (two wait for a slot): every
    greedy output equals one slot's output for the same request."""
    one, four = open_backend(1), open_backend(4)

    async def alone() -> list[list[int]]:
        return [await generate(one, greedy(p, 24 + i, f"alone{i}")) for i, p in
                enumerate(PROMPTS)]

    async def together() -> list[list[int]]:
        return list(await asyncio.gather(*(generate(four, greedy(p, 24 + i, f"together{i}"))
                                           for i, p in enumerate(PROMPTS))))

    try:
        assert asyncio.run(together()) == asyncio.run(alone())
    finally:
        one.close()
        four.close()


def test_drafts_roll_back_inside_one_slot_while_the_others_decode() -> None:
    """A speculative session drafts, keeps 3 of 8 drafts plus a correction, and drafts
    again from its slot's KV (rolled back, not recomputed) while three other slots decode:
    the drafts are exactly those of the session alone."""
    one, four = open_backend(1), open_backend(4)
    session = PROMPTS[2]

    async def drafts(backend: LlamaCppBackend, tenant: str) -> list[list[int]]:
        first = await backend.draft(greedy(session, 8, tenant), 8, frozenset())
        corrected = session + first.tokens[:3] + [(first.tokens[3] + 1) % 49152]
        second = await backend.draft(greedy(corrected, 8, tenant), 8, frozenset())
        assert second.cached_tokens == len(session) + 3  # rolled back, not recomputed
        return [first.tokens, second.tokens]

    async def with_others() -> list[list[int]]:
        others = asyncio.gather(*(generate(four, greedy(p, 40, f"other{i}"))
                                  for i, p in enumerate(PROMPTS[3:])))
        session_drafts, _ = await asyncio.gather(drafts(four, "session"), others)
        return session_drafts

    try:
        assert asyncio.run(with_others()) == asyncio.run(drafts(one, "session"))
    finally:
        one.close()
        four.close()


def test_a_cancelled_request_frees_its_slot_at_once_and_its_length_is_not_counted() -> None:
    backend = open_backend(1)

    async def run() -> float:
        stream = backend.generate(greedy(PROMPTS[1], 400, "a"))
        async for _ in stream:
            break
        await stream.aclose()  # the client went away after its first token
        started = time.monotonic()
        request = greedy(PROMPTS[0], 2, "b")
        await generate(backend, request)
        assert backend.load().running == 0
        # Only the answer that ended on its own tells admission how long answers run (a
        # slot is released at the model thread's next pass).
        backend.scheduler.wake()
        for _ in range(100):
            if backend.scheduler.backpressure.mean_output:
                break
            await asyncio.sleep(0.01)
        assert backend.scheduler.backpressure.mean_output == 2
        return request.waited_s

    try:
        assert asyncio.run(run()) < 0.5  # not the ~400 tokens the first one asked for
    finally:
        backend.close()


def test_a_full_queue_refuses_before_any_work_with_retry_after() -> None:
    backend = open_backend(1, max_waiting=1)

    async def run() -> None:
        busy = asyncio.ensure_future(generate(backend, greedy(PROMPTS[3], 200, "a")))
        while backend.load().running == 0:
            await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(generate(backend, greedy(PROMPTS[4], 200, "b")))
        while backend.load().queued == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(ResourceExhausted) as full:
            await generate(backend, greedy(PROMPTS[0], 4, "c"))
        assert "queue is full" in str(full.value) and full.value.retry_after_s
        # a deadline shorter than the predicted wait + service is refused the same way
        for _ in range(100):  # steps measured as 5 s each
            backend.scheduler.backpressure.stepped(1, 5.0)
        late = greedy(PROMPTS[0], 4, "d")
        late.deadline = Deadline(1.0)
        backend.scheduler.backpressure.max_waiting = 10
        with pytest.raises(ResourceExhausted, match="estimated wait"):
            await generate(backend, late)
        for task in (busy, waiting):
            task.cancel()
        await asyncio.gather(busy, waiting, return_exceptions=True)

    try:
        asyncio.run(run())
    finally:
        backend.close()


def test_the_edge_serves_the_gguf_requantized_to_another_format() -> None:
    from tandem.edge.config import EdgeConfig

    config = EdgeConfig(weights="Q8_0", slots=2, context_window=512, max_tokens_cap=256,
                        threads=2)
    backend = LlamaCppBackend.from_config(config, resolve_model(config.model))
    try:
        assert backend.dtype == "Q8_0" and backend.slots == 2
        assert asyncio.run(generate(backend, greedy(PROMPTS[0], 4, "t")))
    finally:
        backend.close()
