"""Requests as the scenarios send them: one streamed router request, timed and classified
(its status, latency, text, tokens, final chunk), never raising for a gRPC status."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc

# Statuses that are a designed refusal, not a failure.
REFUSALS = {"INVALID_ARGUMENT", "OUT_OF_RANGE", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED",
            "PERMISSION_DENIED"}


@dataclass
class Result:
    """How one request ended."""

    code: str = "OK"
    seconds: float = 0.0
    first_chunk_s: float | None = None
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    tiers: list[int] = field(default_factory=list)  # each chunk's tier
    final: router_pb2.GenerateChunk | None = None
    details: str = ""
    retry_after_ms: int | None = None

    @property
    def ok(self) -> bool:
        return self.code == "OK"


def request(prompt: str, policy: str = "", max_tokens: int = 16, temperature: float = 0.0,
            session_id: str = "", seed: int | None = None) -> router_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=temperature)
    if seed is not None:
        sampling.seed = seed
    return router_pb2.GenerateRequest(prompt=prompt, policy=policy, session_id=session_id,
                                      sampling=sampling)


def retry_after_ms(metadata: Any) -> int | None:
    for key, value in metadata or ():
        if key == "retry-after-ms":
            return int(value)
    return None


async def stream(stub: router_pb2_grpc.RouterStub, req: router_pb2.GenerateRequest,
                 timeout_s: float, metadata: Iterable[tuple[str, str]] = (),
                 stop_after_chunks: int | None = None,
                 first_chunk: asyncio.Event | None = None) -> Result:
    """Stream ``req``; with ``stop_after_chunks``, cancel the call after that many chunks
    (a client that goes away); ``first_chunk`` is set when text arrives or the call ends.
    Every status becomes ``Result.code``."""
    result = Result()
    started = time.monotonic()
    call = stub.GenerateStream(req, timeout=timeout_s, metadata=tuple(metadata))
    chunks = 0
    try:
        async for chunk in call:
            if chunk.done:
                result.final = chunk
                continue
            result.first_chunk_s = result.first_chunk_s or time.monotonic() - started
            if first_chunk is not None:
                first_chunk.set()
            result.text += chunk.text
            result.token_ids += list(chunk.token_ids)
            result.tiers.append(chunk.tier)
            chunks += 1
            if stop_after_chunks is not None and chunks >= stop_after_chunks:
                call.cancel()
                result.code = "CANCELLED"
                break
    except grpc.aio.AioRpcError as exc:
        result.code = exc.code().name
        result.details = exc.details() or ""
        result.retry_after_ms = retry_after_ms(exc.trailing_metadata())
    except asyncio.CancelledError:
        call.cancel()
        raise
    finally:
        if first_chunk is not None:
            first_chunk.set()
    result.seconds = time.monotonic() - started
    return result


def tally(results: Iterable[Result]) -> dict[str, int]:
    """Requests by status."""
    return dict(Counter(r.code for r in results))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def latency_ms(results: Iterable[Result]) -> dict[str, float | None]:
    """p50 / p99 / max end-to-end latency of the results, in ms."""
    seconds = [r.seconds for r in results]
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1e3, 1)
    return {"p50": ms(percentile(seconds, 0.5)), "p99": ms(percentile(seconds, 0.99)),
            "max": ms(max(seconds) if seconds else None)}


class Router:
    """An aio channel to the router and its stub (close it when done)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = router_pb2_grpc.RouterStub(self.channel)

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
