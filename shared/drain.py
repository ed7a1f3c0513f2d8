"""Graceful drain of a gRPC service: on SIGTERM a service stops taking new calls at once
(UNAVAILABLE, so a client or load balancer tries another replica) while the calls it
already runs finish, up to the drain timeout; health checks keep answering (NOT_SERVING)
throughout. gRPC's own ``server.stop(grace)`` refuses health checks too and cancels every
call still running when the grace ends, so a service waits here first and stops after.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

# Health checks are answered while draining (they say NOT_SERVING).
from tandem.shared.errors import HEALTH_PREFIX
from tandem.shared.interceptors import WrappingInterceptor


class DrainGate(WrappingInterceptor):
    """Counts the calls in flight and, once ``close`` is called, refuses new ones."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.in_flight = 0
        self.closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    def close(self) -> None:
        self.closed = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in flight, at most ``timeout_s``; whether it got there."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                return self.in_flight == 0
        return True

    def _enter(self) -> None:
        self.in_flight += 1

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def _refuse(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            f"{self.name} is shutting down (draining); retry on another replica")

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if method.startswith(HEALTH_PREFIX):
            return handler
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if self.closed:
                    await self._refuse(context)
                self._enter()
                try:
                    return await inner(request, context)
                finally:
                    self._leave()

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if self.closed:
                    await self._refuse(context)
                self._enter()
                try:
                    async for item in inner_stream(request, context):
                        yield item
                finally:
                    self._leave()

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer)
        return handler
