"""Two small ASGI middlewares around the app: request counts and latencies by route and
status on the router's Prometheus registry, and the request-body limit (the HTTP twin of
the gRPC server's message limit). Plain ASGI rather than Starlette's BaseHTTPMiddleware,
which would buffer streamed answers and add a task per request."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tandem.router.http.errors import BodyTooLarge, too_large_response
from tandem.shared.metrics import LATENCY_BUCKETS


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("tandem_http_requests", "HTTP requests by route, method and "
                                "status.", ["route", "method", "status"], registry=registry)
        self.latency = Histogram("tandem_http_request_seconds", "HTTP request latency to the "
                                 "last byte of the answer, by route.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=registry)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an app that fails before answering is answered 500 by Starlette

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # The route template, not the path: fuzzed paths must not create label values.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


class BodyLimitMiddleware:
    """Refuses a body over ``limit`` bytes: at once by its Content-Length, or while a
    chunked body is read (BodyTooLarge, answered 413)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            # Outside the app's exception handlers here: answer it directly.
            await too_large_response(BodyTooLarge(self.limit))(scope, receive, send)
            return
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)
