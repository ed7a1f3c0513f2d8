"""The FastAPI app of the router's OpenAI-compatible API. Each completion endpoint turns
its body into a GenerateRequest (convert.py) and answers from the `Gate`'s stream of core
chunks: collected into one object, or sent as server-sent events (``data: {...}`` lines,
then ``data: [DONE]``). The models are the router's policies, ``tandem-<policy>``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import Send

from tandem.router.auth import ApiKey, Gate
from tandem.router.http.convert import (MODEL_PREFIX, Answer, chat_request, completion_request,
                                        model_name, resolve_policy)
from tandem.router.http.errors import ModelNotFound, install_error_handlers, tandem_error_body
from tandem.router.http.middleware import BodyLimitMiddleware, HttpMetrics, MetricsMiddleware
from tandem.router.http.schemas import ChatCompletionRequest, CompletionRequest, _Request
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import Cancelled, TandemError
from tandem.v1 import router_pb2

# Tier name -> "SERVING" or why not; what GET /ready reports.
Readiness = Callable[[], Awaitable[dict[str, str]]]
Chunks = AsyncIterator[router_pb2.GenerateChunk]
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text} for status, text in (
        (400, "invalid request"), (401, "missing or unknown API key"),
        (403, "the key may not use this model"), (404, "unknown model"),
        (413, "body too large"), (429, "rate limit or budget; see Retry-After"),
        (503, "a tier is unavailable"), (504, "deadline exceeded"))}


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class EventStream(StreamingResponse):
    """Server-sent events whose source is closed as soon as the answer ends or the client
    goes away (Starlette cancels the send on a disconnect), so the tiers stop at once."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def _events(first: router_pb2.GenerateChunk, chunks: Chunks, answer: Answer,
                  include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE body; an error after the first chunk (the status is sent) is an error event."""
    try:
        chunk = first
        while not chunk.done:
            yield _event(answer.piece(chunk))
            chunk = await anext(chunks)
        yield _event(answer.finish(chunk))
        if include_usage:
            yield _event(answer.usage(chunk))
        yield b"data: [DONE]\n\n"
    except TandemError as exc:
        yield _event(tandem_error_body(exc)[1])
    finally:
        await chunks.aclose()


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(chunks: Chunks, request: Request) -> list[router_pb2.GenerateChunk]:
    """Every chunk of a non-streamed answer; a client that hangs up first cancels it."""
    work = asyncio.ensure_future(_drain(chunks))
    gone = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
    if work.cancelled():
        raise Cancelled("the client disconnected")
    return work.result()


async def _drain(chunks: Chunks) -> list[router_pb2.GenerateChunk]:
    return [chunk async for chunk in chunks]


class Api:
    """The endpoints' shared state: the gate (and through it the core)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.default_policy = gate.core.config.default_policy
        self.created = int(time.time())

    def api_key(self, request: Request) -> ApiKey | None:
        """FastAPI dependency: the caller's key, checked before the body is used."""
        return self.gate.authenticate(request.headers.get("authorization"))

    def models(self, key: ApiKey | None) -> list[dict[str, Any]]:
        return [{"id": MODEL_PREFIX + name, "object": "model", "created": self.created,
                 "owned_by": "tandem"} for name in self.gate.policies_for(key)]

    async def answer(self, body: _Request, key: ApiKey | None, request: Request,
                     kind: str) -> Response:
        policy = resolve_policy(body, self.gate.core.policies, self.default_policy)
        grpc_request = (chat_request(body, policy) if isinstance(body, ChatCompletionRequest)
                        else completion_request(body, policy))  # type: ignore[arg-type]
        answer = Answer(kind, model_name(policy, self.default_policy), grpc_request.session_id)
        deadline = Deadline(self.gate.core.config.default_timeout_seconds)
        chunks = self.gate.stream(key, grpc_request, deadline)
        if not body.stream:
            return JSONResponse(answer.completion(await _collect(chunks, request)))
        # The first chunk before the status: a refusal is still a 4xx, not an event.
        first = await anext(chunks)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventStream(_events(first, chunks, answer, include_usage),
                           media_type="text/event-stream",
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_app(gate: Gate, registry: CollectorRegistry, readiness: Readiness,
               max_body_bytes: int) -> FastAPI:
    """The app; ``registry`` is the router's (its /metrics adds the HTTP metrics)."""
    api = Api(gate)
    app = FastAPI(title="Tandem", version="1", docs_url=None, redoc_url=None,
                  description="OpenAI-compatible API of the Tandem router: models are its "
                              "policies (tandem-<policy>).")
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(registry))
    key = Depends(api.api_key)

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest, request: Request,
                               caller: ApiKey | None = key) -> Response:
        return await api.answer(body, caller, request, "chat")

    @app.post("/v1/completions", responses=ERROR_RESPONSES)
    async def completions(body: CompletionRequest, request: Request,
                          caller: ApiKey | None = key) -> Response:
        return await api.answer(body, caller, request, "text")

    @app.get("/v1/models", responses=ERROR_RESPONSES)
    async def list_models(caller: ApiKey | None = key) -> dict[str, Any]:
        return {"object": "list", "data": api.models(caller)}

    @app.get("/v1/models/{model}", responses=ERROR_RESPONSES)
    async def get_model(model: str, caller: ApiKey | None = key) -> dict[str, Any]:
        for entry in api.models(caller):
            if entry["id"] == model:
                return entry
        raise ModelNotFound(f"model: the model {model!r} does not exist")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "a tier is not serving"}})
    async def ready() -> JSONResponse:
        tiers = await readiness()
        serving = all(status == "SERVING" for status in tiers.values())
        return JSONResponse({"ready": serving, "tiers": tiers}, 200 if serving else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
