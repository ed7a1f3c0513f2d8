"""The tiers as the on-device SDK sees them: the edge model in this process, the cloud
over gRPC. ``LocalTiers`` implements the router's ``Tiers`` protocol by composition: an
``InProcessEdge`` over the transport-free EdgeHandler, and the router's own gRPC cloud
client behind a reserve, so the router's policies run unchanged on the device.

Cloud calls get the request's deadline minus ``edge_reserve_s``, so when the cloud is
slow or unreachable there is still time to answer from the edge (the SDK's offline
fallback); edge calls get the whole remaining deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import grpc

from tandem.edge.handler import EdgeHandler
from tandem.router.tiers import GrpcCloud
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import DeadlineExceeded, TandemError
from tandem.shared.grpc_security import ChannelSecurity
from tandem.v1 import cloud_pb2, common_pb2, edge_pb2

T = TypeVar("T")

# Cloud statuses after which the answer can still come from the edge.
FALLBACK_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class CloudFailure(TandemError):
    """A call to the cloud failed (its status is kept); raised only by LocalTiers, so the
    SDK can tell a cloud outage from an edge or input error without reading messages."""

    @classmethod
    def wrap(cls, exc: TandemError) -> CloudFailure:
        message = exc.message if exc.message.startswith("cloud: ") else f"cloud: {exc.message}"
        return cls(message, exc.code)

    @property
    def allows_fallback(self) -> bool:
        return self.code in FALLBACK_CODES


class InProcessEdge:
    """The edge half of Tiers over an EdgeHandler in this process: deadlines enforced
    with timeouts, time spent added to ``timings.edge_ns``."""

    def __init__(self, handler: EdgeHandler) -> None:
        self.handler = handler

    async def _call(self, work: Awaitable[T], deadline: Deadline,
                    timings: common_pb2.Timings) -> T:
        started = time.perf_counter_ns()
        try:
            return await asyncio.wait_for(work, deadline.timeout())
        except TimeoutError as exc:
            raise DeadlineExceeded("edge: deadline exceeded") from exc
        finally:
            timings.edge_ns += time.perf_counter_ns() - started

    async def edge_generate(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                            timings: common_pb2.Timings) -> common_pb2.TierGenerateResponse:
        return await self._call(self.handler.generation.generate(request, deadline), deadline,
                                timings)

    async def edge_stream(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                          timings: common_pb2.Timings
                          ) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        stream = self.handler.generation.stream(request, deadline)
        try:
            while True:
                try:
                    chunk = await self._call(anext(stream), deadline, timings)
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            await stream.aclose()  # stops the model and frees it for the next request

    async def draft(self, request: edge_pb2.DraftRequest, deadline: Deadline,
                    timings: common_pb2.Timings) -> edge_pb2.DraftResponse:
        return await self._call(self.handler.draft(request, deadline), deadline, timings)

    def edge_load(self) -> common_pb2.TierLoad | None:
        return self.handler.backend.load()


class LocalTiers:
    """An in-process edge and a remote cloud, as one Tiers."""

    def __init__(self, edge: EdgeHandler, cloud_address: str, edge_reserve_s: float = 2.0,
                 cloud_rtt_s: float = 0.0, security: ChannelSecurity | None = None) -> None:
        self.edge = InProcessEdge(edge)
        self.cloud = GrpcCloud(cloud_address, cloud_rtt_s, security)
        self.edge_reserve_s = edge_reserve_s
        # The edge calls are the in-process edge's own methods.
        self.edge_generate = self.edge.edge_generate
        self.edge_stream = self.edge.edge_stream
        self.draft = self.edge.draft
        self.edge_load = self.edge.edge_load
        self.end_session = self.cloud.end_session
        self.cloud_load = self.cloud.cloud_load

    def cloud_deadline(self, deadline: Deadline) -> Deadline:
        """The part of ``deadline`` the cloud may use (the rest is kept for the edge)."""
        remaining = deadline.remaining()
        if remaining is None:
            return deadline
        return Deadline(max(remaining - min(self.edge_reserve_s, remaining / 2), 0.0))

    async def cloud_stream(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                           timings: common_pb2.Timings
                           ) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        stream = self.cloud.cloud_stream(request, self.cloud_deadline(deadline), timings)
        try:
            async for chunk in stream:
                yield chunk
        except TandemError as exc:  # every failure here is the cloud call's
            raise CloudFailure.wrap(exc) from exc
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def verify(self, request: cloud_pb2.VerifyRequest, deadline: Deadline,
                     timings: common_pb2.Timings) -> cloud_pb2.VerifyResponse:
        try:
            return await self.cloud.verify(request, self.cloud_deadline(deadline), timings)
        except TandemError as exc:  # every failure here is the cloud call's
            raise CloudFailure.wrap(exc) from exc

    async def close(self) -> None:
        await self.cloud.close()
