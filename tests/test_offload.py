"""Route predictions off the event loop: concurrent prompts in one batch, cached per tenant."""

import asyncio
import threading

import numpy as np
import pytest

from tandem.router.offload import CoalescedPredictions


def test_concurrent_prompts_are_predicted_in_one_batch_off_the_loop() -> None:
    calls: list[tuple[list[str], str]] = []
    release = threading.Event()

    def predict_many(texts):
        release.wait(5)  # the first call holds the worker while the others queue up
        calls.append((list(texts), threading.current_thread().name))
        return np.asarray([len(t) / 10 for t in texts])

    async def run() -> list[float]:
        predictions = CoalescedPredictions(predict_many)
        first = asyncio.ensure_future(predictions.predict("a", "x"))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(predictions.predict("a", "y" * n)) for n in range(2, 6)]
        await asyncio.sleep(0.05)  # the loop is free while the worker runs
        release.set()
        return [await first, *[await r for r in rest]]

    assert asyncio.run(run()) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert [texts for texts, _ in calls] == [["x"], ["yy", "yyy", "yyyy", "yyyyy"]]
    assert all(name.startswith("route-encoder") for _, name in calls)


def test_answers_are_remembered_per_tenant_and_failures_reach_every_waiter() -> None:
    seen: list[str] = []

    def predict_many(texts):
        seen.extend(texts)
        if "bad" in texts:
            raise RuntimeError("encoder failed")
        return np.zeros(len(texts))

    async def run() -> None:
        predictions = CoalescedPredictions(predict_many)
        await predictions.predict("a", "hello")
        await predictions.predict("a", "hello")  # cached
        await predictions.predict("b", "hello")  # another tenant: not from a's cache
        with pytest.raises(RuntimeError):
            await predictions.predict("a", "bad")

    asyncio.run(run())
    assert seen == ["hello", "hello", "bad"]
