"""The Tandem client SDK: ``AsyncTandemClient`` (asyncio) and ``TandemClient`` (blocking).

    client = TandemClient(mode="on_device", cloud_address="127.0.0.1:50052")
    reply = client.generate("Name three colours.", max_tokens=32)
    print(reply.text, reply.tiers, reply.usage, reply.degraded)

On-device mode runs the edge model and the router's policies in this process and only
calls the cloud for escalations and speculative verification; when the cloud is
unreachable or too slow the edge answers alone and the response is marked ``degraded``.
Remote mode sends every call to a Tandem router service. Calls that fail UNAVAILABLE
before anything was streamed are retried with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from tandem.edge.sdk.engines import ClientConfig, Engine, LocalEngine, RemoteEngine
from tandem.edge.sdk.types import Decision, Response, StreamChunk, Usage, finish_name, tier_name
from tandem.shared.errors import TandemError, Unavailable, from_rpc_error, typed
from tandem.shared.deadlines import Deadline
from tandem.shared.segments import merge_by_tier
from tandem.v1 import common_pb2, router_pb2

Message = dict[str, str]  # {"role": ..., "content": ...}
SAMPLING_FIELDS = frozenset(common_pb2.SamplingParams.DESCRIPTOR.fields_by_name)


@dataclass
class ClientStats:
    """Counters of one client (the SDK's metrics)."""

    requests: int = 0
    degraded: int = 0  # answered by the edge alone because the cloud failed
    retries: int = 0  # UNAVAILABLE calls retried


@dataclass
class _Result:
    """What a running call has produced so far."""

    started: float
    chunks: list[StreamChunk] = field(default_factory=list)
    final: router_pb2.GenerateChunk | None = None
    first_token_at: float | None = None
    degraded_reason: str = ""


def build_request(prompt: str | None, messages: Sequence[Message] | None, *, policy: str,
                  tenant: str, session_id: str = "", raw_prompt: bool = False,
                  **sampling: Any) -> router_pb2.GenerateRequest:
    """The router request for one call (values are validated by the router core)."""
    unknown = set(sampling) - SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"unknown sampling parameters {sorted(unknown)}; "
                        f"known: {sorted(SAMPLING_FIELDS)}")
    if (prompt is None) == (messages is None):
        raise TypeError("pass exactly one of prompt or messages")
    request = router_pb2.GenerateRequest(
        policy=policy, tenant=tenant, session_id=session_id, raw_prompt=raw_prompt,
        sampling=common_pb2.SamplingParams(**{k: v for k, v in sampling.items()
                                              if v is not None}))
    if prompt is not None:
        request.prompt = prompt
    else:
        request.messages.SetInParent()
        for m in messages or ():
            request.messages.messages.add(role=m["role"], content=m["content"])
    return request


class AsyncStream:
    """An answer being streamed: iterate for StreamChunks; ``cancel()`` stops all work
    (edge and cloud); ``response`` holds the complete Response once iteration ends."""

    def __init__(self, chunks: AsyncIterator[StreamChunk], result: _Result,
                 to_response: Any) -> None:
        self._chunks = chunks
        self._result = result
        self._to_response = to_response
        self.response: Response | None = None
        self.cancelled = False

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> StreamChunk:
        if self.cancelled:
            raise StopAsyncIteration
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            self.response = self._to_response(self._result)
            raise

    async def cancel(self) -> None:
        """Stop generating; closing the chain cancels the model work and cloud calls."""
        self.cancelled = True
        await self._chunks.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()


class AsyncTandemClient:
    """The asyncio client. Construct from a ClientConfig and/or its fields as keywords."""

    def __init__(self, config: ClientConfig | None = None, **overrides: Any) -> None:
        base = config or ClientConfig()
        self.config = dataclasses.replace(base, **overrides) if overrides else base
        self.stats = ClientStats()
        self._engine: Engine = (LocalEngine(self.config) if self.config.mode == "on_device"
                                else RemoteEngine(self.config))

    async def generate(self, prompt: str | None = None, *,
                       messages: Sequence[Message] | None = None, **options: Any) -> Response:
        """The complete answer to ``prompt`` (a user message) or ``messages``.

        Options: policy, deadline_s, metadata, session_id, raw_prompt, and sampling
        parameters (max_tokens, temperature, top_p, top_k, stop, seed, ...)."""
        stream = self.stream(prompt, messages=messages, **options)
        async for _ in stream:
            pass
        assert stream.response is not None
        return stream.response

    def stream(self, prompt: str | None = None, *, messages: Sequence[Message] | None = None,
               policy: str | None = None, deadline_s: float | None = None,
               metadata: dict[str, str] | None = None, session_id: str = "",
               raw_prompt: bool = False, **sampling: Any) -> AsyncStream:
        """Stream the answer as it is produced (see ``generate`` for the options)."""
        request = build_request(prompt, messages, policy=policy or self.config.policy,
                                tenant=self.config.tenant, session_id=session_id,
                                raw_prompt=raw_prompt, **sampling)
        deadline = Deadline(deadline_s if deadline_s is not None else self.config.deadline_s)
        call_metadata = {**self.config.metadata, **(metadata or {})}
        result = _Result(time.perf_counter())
        self.stats.requests += 1
        chunks = self._with_retries(request, deadline, call_metadata, result)
        return AsyncStream(chunks, result, lambda r: _response(r, request, call_metadata))

    def chat_session(self, system: str | None = None,
                     session_id: str | None = None) -> AsyncChatSession:
        """A multi-turn conversation; the history is kept by the client in on-device mode
        and by the router (its session store) in remote mode."""
        return AsyncChatSession(self, session_id or uuid.uuid4().hex, system)

    async def close(self) -> None:
        await self._engine.close()

    async def __aenter__(self) -> AsyncTandemClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _with_retries(self, request: router_pb2.GenerateRequest, deadline: Deadline,
                            metadata: dict[str, str], result: _Result
                            ) -> AsyncIterator[StreamChunk]:
        """Retry UNAVAILABLE with jittered exponential backoff, never once text went out."""
        for attempt in range(self.config.max_retries + 1):
            try:
                async for chunk in self._typed(self._attempt(request, deadline, metadata, result)):
                    yield chunk
                return
            except Unavailable:
                delay = self.config.retry_backoff_s * 2 ** attempt * random.uniform(0.5, 1.0)
                remaining = deadline.remaining()
                if (result.chunks or attempt == self.config.max_retries
                        or (remaining is not None and remaining <= delay)):
                    raise
                self.stats.retries += 1
                await asyncio.sleep(delay)

    async def _typed(self, chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
        """Every failure as a typed SDK error carrying its gRPC status."""
        try:
            async for chunk in chunks:
                yield chunk
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        except TandemError as exc:
            typed_exc = typed(exc)
            if typed_exc is exc:
                raise
            raise typed_exc from exc
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    async def _attempt(self, request: router_pb2.GenerateRequest, deadline: Deadline,
                       metadata: dict[str, str], result: _Result) -> AsyncIterator[StreamChunk]:
        from tandem.edge.sdk.local_tiers import CloudFailure  # on-device only

        try:
            async for chunk in self._run_engine(request, deadline, metadata, result):
                yield chunk
            return
        except CloudFailure as exc:
            if not (self.config.offline_fallback and exc.allows_fallback) or result.chunks:
                raise
            result.degraded_reason = str(exc)
        # The cloud is down or too slow: the edge answers within what is left.
        self.stats.degraded += 1
        fallback = router_pb2.GenerateRequest()
        fallback.CopyFrom(request)
        fallback.policy = "edge"
        async for chunk in self._run_engine(fallback, deadline, metadata, result):
            yield chunk

    async def _run_engine(self, request: router_pb2.GenerateRequest, deadline: Deadline,
                          metadata: dict[str, str], result: _Result
                          ) -> AsyncIterator[StreamChunk]:
        pieces = self._engine.stream(request, deadline, metadata)
        try:
            async for piece in pieces:
                if piece.done:
                    result.final = piece
                    continue
                chunk = StreamChunk(tier_name(piece.tier), piece.text, tuple(piece.token_ids))
                result.first_token_at = result.first_token_at or time.perf_counter()
                result.chunks.append(chunk)
                yield chunk
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]


def _response(result: _Result, request: router_pb2.GenerateRequest,
              metadata: dict[str, str]) -> Response:
    final = result.final or router_pb2.GenerateChunk()
    return Response(
        text="".join(c.text for c in result.chunks), segments=tuple(merge_by_tier(result.chunks)),
        finish_reason=finish_name(final.finish_reason), usage=Usage.from_pb(final.usage),
        decision=Decision.from_pb(final.decision), degraded=bool(result.degraded_reason),
        degraded_reason=result.degraded_reason, session_id=request.session_id,
        time_to_first_token_s=(None if result.first_token_at is None
                               else result.first_token_at - result.started),
        total_s=time.perf_counter() - result.started, metadata=dict(metadata))


class AsyncChatSession:
    """A conversation: each ``send`` sees every earlier turn."""

    def __init__(self, client: AsyncTandemClient, session_id: str, system: str | None) -> None:
        self.client = client
        self.session_id = session_id
        self.history: list[Message] = []  # the turns so far, as the model saw them
        self._pending_system = system

    def _messages(self, text: str) -> list[Message]:
        turns = [{"role": "system", "content": self._pending_system}] if self._pending_system else []
        return turns + [{"role": "user", "content": text}]

    async def send(self, text: str, **options: Any) -> Response:
        messages = self._messages(text)
        reply = await self.client.generate(messages=messages, session_id=self.session_id,
                                           **options)
        self._remember(messages, reply)
        return reply

    def stream(self, text: str, **options: Any) -> AsyncStream:
        messages = self._messages(text)
        stream = self.client.stream(messages=messages, session_id=self.session_id, **options)
        original = stream._to_response

        def finish(result: _Result) -> Response:
            reply: Response = original(result)
            self._remember(messages, reply)
            return reply

        stream._to_response = finish
        return stream

    def _remember(self, messages: list[Message], reply: Response) -> None:
        self._pending_system = None
        self.history.extend(messages + [{"role": "assistant", "content": reply.text}])


# ---------------------------------------------------------------- blocking client


class _LoopThread:
    """An event loop on a daemon thread that the blocking client runs its calls on."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tandem-sdk",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Stream:
    """A blocking stream of StreamChunks with ``cancel()`` and, once done, ``response``."""

    def __init__(self, inner: AsyncStream, loop: _LoopThread) -> None:
        self._inner = inner
        self._loop = loop

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> StreamChunk:
        try:
            return self._loop.run(self._inner.__anext__())  # type: ignore[no-any-return]
        except StopAsyncIteration:
            raise StopIteration from None

    def cancel(self) -> None:
        """Stop generating: the edge model and any cloud call stop at once."""
        self._loop.run(self._inner.cancel())

    @property
    def response(self) -> Response | None:
        return self._inner.response

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class ChatSession:
    """A blocking multi-turn conversation (see AsyncChatSession)."""

    def __init__(self, inner: AsyncChatSession, loop: _LoopThread) -> None:
        self._inner = inner
        self._loop = loop

    @property
    def session_id(self) -> str:
        return self._inner.session_id

    @property
    def history(self) -> list[Message]:
        return self._inner.history

    def send(self, text: str, **options: Any) -> Response:
        return self._loop.run(self._inner.send(text, **options))  # type: ignore[no-any-return]

    def stream(self, text: str, **options: Any) -> Stream:
        return Stream(self._inner.stream(text, **options), self._loop)


class TandemClient:
    """The blocking client; the same API as AsyncTandemClient without ``await``."""

    def __init__(self, config: ClientConfig | None = None, **overrides: Any) -> None:
        self._loop = _LoopThread()

        async def build() -> AsyncTandemClient:  # grpc.aio channels bind to their loop
            return AsyncTandemClient(config, **overrides)

        try:
            self._client: AsyncTandemClient = self._loop.run(build())
        except BaseException:
            self._loop.stop()
            raise

    @property
    def config(self) -> ClientConfig:
        return self._client.config

    @property
    def stats(self) -> ClientStats:
        return self._client.stats

    def generate(self, prompt: str | None = None, *, messages: Sequence[Message] | None = None,
                 **options: Any) -> Response:
        return self._loop.run(  # type: ignore[no-any-return]
            self._client.generate(prompt, messages=messages, **options))

    def stream(self, prompt: str | None = None, *, messages: Sequence[Message] | None = None,
               **options: Any) -> Stream:
        async def open_stream() -> AsyncStream:
            return self._client.stream(prompt, messages=messages, **options)

        return Stream(self._loop.run(open_stream()), self._loop)

    def chat_session(self, system: str | None = None,
                     session_id: str | None = None) -> ChatSession:
        return ChatSession(self._client.chat_session(system, session_id), self._loop)

    def close(self) -> None:
        self._loop.run(self._client.close())
        self._loop.stop()

    def __enter__(self) -> TandemClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["AsyncChatSession", "AsyncStream", "AsyncTandemClient", "ChatSession",
           "ClientConfig", "ClientStats", "Stream", "TandemClient", "TandemError"]
