"""Model calls made off the router's event loop.

The route policy's prompt encoder (MiniLM) ran on the event loop: under 4x overload it
was 79 % of the router's CPU (py-spy), and every other request — refusals included —
waited behind it for seconds. ``CoalescedPredictions`` runs it on one worker thread
instead (torch releases the GIL, so the loop goes on serving), predicts the prompts of
concurrent requests in one batch (a batch of 16 costs far less than 16 calls), and
remembers recent answers per tenant and text (per tenant: a shared cache would tell one
tenant, by its speed, which prompts another sent)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CACHE_SIZE = 4096
MAX_BATCH = 32


class CoalescedPredictions:
    def __init__(self, predict_many: Callable[[Sequence[str]], np.ndarray],
                 cache_size: int = CACHE_SIZE) -> None:
        self._predict_many = predict_many
        self._cache: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._cache_size = cache_size
        self._pending: dict[tuple[str, str], list[asyncio.Future[float]]] = {}
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="route-encoder")

    async def predict(self, tenant: str, text: str) -> float:
        key = (tenant, text)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(future)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Predict what is pending, in batches, until nothing is."""
        loop = asyncio.get_running_loop()
        while self._pending:
            keys = list(self._pending)[:MAX_BATCH]
            waiters = {key: self._pending.pop(key) for key in keys}
            try:
                scores = await loop.run_in_executor(
                    self._executor, self._predict_many, [text for _, text in keys])
            except Exception as exc:  # noqa: BLE001 - each waiting request gets the error
                for futures in waiters.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            for key, score in zip(keys, scores):
                self._remember(key, float(score))
                for future in waiters[key]:
                    if not future.done():  # its request may have been cancelled
                        future.set_result(float(score))

    def _remember(self, key: tuple[str, str], score: float) -> None:
        self._cache[key] = score
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
