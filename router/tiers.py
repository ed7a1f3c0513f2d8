"""The tiers as policies see them (``Tiers``), and its implementation over gRPC.

Policies talk to the edge and cloud only through a ``Tiers``: every call carries the
request's remaining deadline, adds the time it waited to the request's timings, and
fails with the Tandem error of the tier's status. ``GrpcTiers`` reaches one replica of
each tier over a channel each; ``ReplicaTiers`` (replica_tiers.py), what the router
service runs on, balances several replicas per tier over the same clients; the SDK's
on-device mode implements the protocol with an in-process edge
(tandem.edge.sdk.local_tiers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import grpc

from tandem.router.load import LoadWatch
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import TandemError, Unavailable, from_rpc_error
from tandem.shared.grpc_security import ChannelSecurity
from tandem.shared.grpc_server import CHANNEL_OPTIONS
from tandem.v1 import cloud_pb2, cloud_pb2_grpc, common_pb2, edge_pb2, edge_pb2_grpc

T = TypeVar("T")
logger = logging.getLogger(__name__)


class EdgeTier(Protocol):
    """The edge calls policies make."""

    async def edge_generate(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                            timings: common_pb2.Timings) -> common_pb2.TierGenerateResponse: ...

    def edge_stream(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                    timings: common_pb2.Timings) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        """Closing the iterator early stops the edge's work."""

    async def draft(self, request: edge_pb2.DraftRequest, deadline: Deadline,
                    timings: common_pb2.Timings) -> edge_pb2.DraftResponse: ...

    def edge_load(self) -> common_pb2.TierLoad | None:
        """The edge's latest load (None while unknown)."""


class CloudTier(Protocol):
    """The cloud calls policies make."""

    def cloud_stream(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                     timings: common_pb2.Timings) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        """Closing the iterator early stops the cloud's work."""

    async def verify(self, request: cloud_pb2.VerifyRequest, deadline: Deadline,
                     timings: common_pb2.Timings) -> cloud_pb2.VerifyResponse: ...

    async def end_session(self, tenant: str, session_id: str) -> None:
        """Free the cloud's KV of a finished speculative session (best effort)."""

    def cloud_load(self) -> common_pb2.TierLoad | None:
        """The cloud's latest load (None while unknown)."""


class Tiers(EdgeTier, CloudTier, Protocol):
    """Everything policies need from the two tiers."""

    async def close(self) -> None: ...


@asynccontextmanager
async def _upstream(service: str, timings: common_pb2.Timings, field: str) -> AsyncIterator[None]:
    """Time a call into ``timings.<field>``; a failed call raises the Tandem error of its
    status, its message prefixed with ``service`` (retry-after hints kept)."""
    started = time.perf_counter_ns()
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise tier_error(exc, service) from exc
    finally:
        setattr(timings, field, getattr(timings, field) + time.perf_counter_ns() - started)


# A tier that refuses the router's own credentials (internal token, client certificate)
# is misconfigured, not the client: to the client it is a dependency that is down (503 over
# HTTP), never the 401/403 that would say its own key is wrong.
_ROUTER_CREDENTIALS_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def tier_error(exc: grpc.aio.AioRpcError, service: str) -> TandemError:
    """The Tandem error a failed tier call raises in the router."""
    if exc.code() in _ROUTER_CREDENTIALS_REFUSED:
        return Unavailable(f"{service}: refused the router's credentials "
                           f"({exc.code().name}: {exc.details()})")
    return from_rpc_error(exc, service)


async def _unary(service: str, call: Callable[..., Awaitable[T]], request: Any,
                 deadline: Deadline, timings: common_pb2.Timings) -> T:
    async with _upstream(service, timings, f"{service}_ns"):
        return await call(request, timeout=deadline.timeout())


async def _stream(service: str, call: Callable[..., Any], request: Any, deadline: Deadline,
                  timings: common_pb2.Timings) -> AsyncIterator[common_pb2.TierGenerateChunk]:
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


class UnaryDelay(grpc.aio.UnaryUnaryClientInterceptor):
    """Delays the start of every unary call by a fixed time: a simulated network round
    trip for benchmarks. (grpc.aio files an interceptor under the first call kind it
    implements only, so each kind has its own class.)"""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay_s)
        return await continuation(client_call_details, request)


class StreamDelay(grpc.aio.UnaryStreamClientInterceptor):
    """The same for streams: paid once, before the first message, as on a real link."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay_s)
        return await continuation(client_call_details, request)


class GrpcEdge:
    """An edge service over one channel (``security``: TLS/mTLS and the internal token)."""

    def __init__(self, address: str, security: ChannelSecurity | None = None,
                 options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS) -> None:
        self.channel = (security or ChannelSecurity()).aio_channel(address, options)
        self._stub = edge_pb2_grpc.EdgeStub(self.channel)
        self._load = LoadWatch(lambda timeout: self._stub.Load(common_pb2.LoadRequest(),
                                                               timeout=timeout))

    def edge_load(self) -> common_pb2.TierLoad | None:
        return self._load.latest()

    async def edge_generate(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                            timings: common_pb2.Timings) -> common_pb2.TierGenerateResponse:
        return await _unary("edge", self._stub.Generate, request, deadline, timings)

    def edge_stream(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                    timings: common_pb2.Timings) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        return _stream("edge", self._stub.GenerateStream, request, deadline, timings)

    async def draft(self, request: edge_pb2.DraftRequest, deadline: Deadline,
                    timings: common_pb2.Timings) -> edge_pb2.DraftResponse:
        return await _unary("edge", self._stub.Draft, request, deadline, timings)

    async def close(self) -> None:
        await self._load.close()
        await self.channel.close()


class GrpcCloud:
    """A cloud service over one channel (``rtt_s``: a simulated round trip per call)."""

    def __init__(self, address: str, rtt_s: float = 0.0,
                 security: ChannelSecurity | None = None,
                 options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS) -> None:
        interceptors = [UnaryDelay(rtt_s), StreamDelay(rtt_s)] if rtt_s > 0 else None
        self.channel = (security or ChannelSecurity()).aio_channel(address, options, interceptors)
        self._stub = cloud_pb2_grpc.CloudStub(self.channel)
        self._load = LoadWatch(lambda timeout: self._stub.Load(common_pb2.LoadRequest(),
                                                               timeout=timeout))

    def cloud_load(self) -> common_pb2.TierLoad | None:
        return self._load.latest()

    def cloud_stream(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                     timings: common_pb2.Timings) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        return _stream("cloud", self._stub.GenerateStream, request, deadline, timings)

    async def verify(self, request: cloud_pb2.VerifyRequest, deadline: Deadline,
                     timings: common_pb2.Timings) -> cloud_pb2.VerifyResponse:
        return await _unary("cloud", self._stub.Verify, request, deadline, timings)

    async def end_session(self, tenant: str, session_id: str) -> None:
        try:  # bounded: the cloud also evicts idle sessions itself
            await self._stub.EndSession(
                cloud_pb2.EndSessionRequest(session_id=session_id, tenant=tenant), timeout=1.0)
        except grpc.aio.AioRpcError as exc:
            logger.debug("EndSession %s failed: %s", session_id, exc.code().name)

    async def close(self) -> None:
        await self._load.close()
        await self.channel.close()


class GrpcTiers:
    """Both tiers over gRPC: what the router service runs on."""

    def __init__(self, edge_address: str, cloud_address: str, cloud_rtt_s: float = 0.0,
                 security: ChannelSecurity | None = None) -> None:
        self.edge = GrpcEdge(edge_address, security)
        self.cloud = GrpcCloud(cloud_address, cloud_rtt_s, security)
        # The Tiers calls are the two clients' own methods.
        self.edge_generate = self.edge.edge_generate
        self.edge_stream = self.edge.edge_stream
        self.draft = self.edge.draft
        self.edge_load = self.edge.edge_load
        self.cloud_load = self.cloud.cloud_load
        self.cloud_stream = self.cloud.cloud_stream
        self.verify = self.cloud.verify
        self.end_session = self.cloud.end_session

    async def close(self) -> None:
        await self.edge.close()
        await self.cloud.close()
