"""Clients of the edge and cloud services as the policies use them: every call carries
the request's remaining deadline, is timed, and fails with the upstream status."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc

from tandem.shared.deadlines import Deadline
from tandem.shared.errors import UpstreamError
from tandem.shared.grpc_server import CHANNEL_OPTIONS
from tandem.v1 import cloud_pb2, cloud_pb2_grpc, common_pb2, edge_pb2, edge_pb2_grpc

T = TypeVar("T")
logger = logging.getLogger(__name__)


@asynccontextmanager
async def _upstream(service: str, timings: common_pb2.Timings, field: str) -> AsyncIterator[None]:
    """Time a call into ``timings.<field>`` and turn RPC errors into UpstreamError."""
    started = time.perf_counter_ns()
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        details = exc.details() or exc.code().name
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            details = f"unavailable: {details}"
        raise UpstreamError(service, exc.code(), details) from exc
    finally:
        setattr(timings, field, getattr(timings, field) + time.perf_counter_ns() - started)


class DelayInterceptor(grpc.aio.UnaryUnaryClientInterceptor,
                       grpc.aio.UnaryStreamClientInterceptor):
    """Delays the start of every call by a fixed time: a simulated network round trip
    for benchmarks (a unary call pays it once per call, a stream once before its first
    message, as on a real link)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay_s)
        return await continuation(client_call_details, request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay_s)
        return await continuation(client_call_details, request)


class Tiers:
    """The edge and cloud services behind one object (one channel each)."""

    def __init__(self, edge_address: str, cloud_address: str, cloud_rtt_s: float = 0.0) -> None:
        self._edge_channel = grpc.aio.insecure_channel(edge_address, options=CHANNEL_OPTIONS)
        interceptors = [DelayInterceptor(cloud_rtt_s)] if cloud_rtt_s > 0 else None
        self._cloud_channel = grpc.aio.insecure_channel(cloud_address, options=CHANNEL_OPTIONS,
                                                        interceptors=interceptors)
        self.edge = edge_pb2_grpc.EdgeStub(self._edge_channel)
        self.cloud = cloud_pb2_grpc.CloudStub(self._cloud_channel)

    async def _unary(self, service: str, call: Callable[..., Awaitable[T]], request: Any,
                     deadline: Deadline, timings: common_pb2.Timings) -> T:
        async with _upstream(service, timings, f"{service}_ns"):
            return await call(request, timeout=deadline.timeout())

    async def _stream(self, service: str, call: Callable[..., Any], request: Any,
                      deadline: Deadline, timings: common_pb2.Timings
                      ) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        stream = call(request, timeout=deadline.timeout())
        try:
            while True:
                async with _upstream(service, timings, f"{service}_ns"):
                    chunk = await stream.read()
                if chunk is grpc.aio.EOF:
                    return
                yield chunk
        finally:
            stream.cancel()  # a consumer that stops early must stop the tier's work too

    async def edge_generate(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                            timings: common_pb2.Timings) -> common_pb2.TierGenerateResponse:
        return await self._unary("edge", self.edge.Generate, request, deadline, timings)

    def edge_stream(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                    timings: common_pb2.Timings) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        return self._stream("edge", self.edge.GenerateStream, request, deadline, timings)

    def cloud_stream(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                     timings: common_pb2.Timings) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        return self._stream("cloud", self.cloud.GenerateStream, request, deadline, timings)

    async def draft(self, request: edge_pb2.DraftRequest, deadline: Deadline,
                    timings: common_pb2.Timings) -> edge_pb2.DraftResponse:
        return await self._unary("edge", self.edge.Draft, request, deadline, timings)

    async def verify(self, request: cloud_pb2.VerifyRequest, deadline: Deadline,
                     timings: common_pb2.Timings) -> cloud_pb2.VerifyResponse:
        return await self._unary("cloud", self.cloud.Verify, request, deadline, timings)

    async def end_session(self, tenant: str, session_id: str) -> None:
        """Free the cloud's KV for a finished speculative session (best effort, bounded)."""
        try:
            await self.cloud.EndSession(
                cloud_pb2.EndSessionRequest(session_id=session_id, tenant=tenant), timeout=1.0)
        except grpc.aio.AioRpcError as exc:  # the cloud also evicts idle sessions itself
            logger.debug("EndSession %s failed: %s", session_id, exc.code().name)

    async def close(self) -> None:
        await self._edge_channel.close()
        await self._cloud_channel.close()
