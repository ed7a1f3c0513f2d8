"""``Tiers`` over several replicas per tier: what the router service runs on.

Policies see one edge and one cloud (the ``Tiers`` protocol); underneath, each call
goes to a replica of its tier (replicas.py): new prompts by prefix with bounded load,
and the rounds of a speculative session (its Draft and Verify calls, same session id)
to the replica that holds the session's KV. That binding — the affinity — is kept in
this router and in the state store (Redis in a fleet, with a TTL), so every router
replica sends a session to the same place. When a session's replica is gone (not
SERVING, unreachable, or UNAVAILABLE on the call), the session is rebuilt on another:
every Verify and Draft carries the whole sequence, so the new replica recomputes its
KV (prefix cache permitting) and the answer goes on unchanged; each rebuild is counted.
With one fixed replica per tier all of this reduces to plain calls.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from tandem.router.balance import PrefixBalancer
from tandem.router.replicas import C, ReplicaPool, Targets, connect_with
from tandem.router.state.base import StateStore
from tandem.router.tiers import GrpcCloud, GrpcEdge
from tandem.shared.deadlines import Deadline
from tandem.shared.errors import TandemError, Unavailable
from tandem.shared.grpc_security import ChannelSecurity
from tandem.v1 import cloud_pb2, common_pb2, edge_pb2

if TYPE_CHECKING:
    from tandem.router.config import RouterConfig
    from tandem.router.metrics import ReplicaMetrics

logger = logging.getLogger(__name__)
T = TypeVar("T")
LOCAL_SESSIONS = 100_000  # affinities this router remembers itself (LRU)


class SessionAffinity(Generic[C]):
    """Which replica of one tier holds each session's KV: this router's own map first,
    the state store (shared by the router fleet) behind it."""

    def __init__(self, pool: ReplicaPool[C], state: StateStore, ttl_s: float) -> None:
        self.pool = pool
        self.state = state
        self.ttl_s = ttl_s
        # (tenant, session) -> [replica address, tokens the last round sent (None: unknown)]
        self._local: OrderedDict[tuple[str, str], list[object]] = OrderedDict()

    async def bound(self, tenant: str, session_id: str) -> str | None:
        entry = self._local.get((tenant, session_id))
        if entry is not None:
            return str(entry[0])
        return await self.state.affinity(self.pool.tier, tenant, session_id)

    def _remember(self, tenant: str, session_id: str, address: str) -> None:
        self._local[(tenant, session_id)] = [address, None]
        self._local.move_to_end((tenant, session_id))
        while len(self._local) > LOCAL_SESSIONS:
            self._local.popitem(last=False)

    async def call(self, tenant: str, session_id: str, tokens: Sequence[int], method: str,
                   call: Callable[[C], Awaitable[T]]) -> T:
        """``call`` on the session's replica (chosen by prefix on its first call); on a
        replica that is gone, or UNAVAILABLE, on another, which then holds the session."""
        if self.pool.targets.single:
            return await self.pool.unary(tenant, tokens, method, call)
        await self.pool.replicas()  # known before a binding is looked up among them
        bound = await self.bound(tenant, session_id)
        replica = self.pool.get(bound) if bound else None
        if replica is not None and not replica.healthy:
            replica = None
        if replica is None:
            replica = await self.pool.choose(tenant, tokens)
        if replica is None:
            raise Unavailable(f"{self.pool.tier}: unavailable: no replica")
        try:
            async with self.pool.track(replica, method):
                result = await call(replica.client)
        except Unavailable:
            other = await self.pool.choose(tenant, tokens, exclude=[replica.address])
            if other is None:
                raise
            self.pool.metrics.failovers.labels(self.pool.tier, method).inc()
            replica = other
            async with self.pool.track(replica, method):
                result = await call(replica.client)
        if replica.address != bound:
            if bound is not None:  # its KV was elsewhere: recomputed here
                self.pool.metrics.rebuilds.labels(self.pool.tier).inc()
            self._remember(tenant, session_id, replica.address)
            await self._store(tenant, session_id, replica.address)
        return result

    async def _store(self, tenant: str, session_id: str, address: str) -> None:
        try:
            await self.state.set_affinity(self.pool.tier, tenant, session_id, address, self.ttl_s)
        except TandemError as exc:  # this router still knows it; others would rebuild
            logger.warning("storing the affinity of %s failed: %s", session_id, exc)

    def swap_length(self, tenant: str, session_id: str, length: int) -> int | None:
        """Record the tokens a round sent; returns what the previous round sent (None on
        the session's first round on its replica)."""
        entry = self._local.get((tenant, session_id))
        if entry is None:
            return None
        previous, entry[1] = entry[1], length
        return previous  # type: ignore[return-value]

    async def release(self, tenant: str, session_id: str) -> str | None:
        """Forget the session; returns the replica that held it (when known)."""
        if self.pool.targets.single:
            return self.pool.targets.addresses[0]
        entry = self._local.pop((tenant, session_id), None)
        address = str(entry[0]) if entry else None
        try:
            if address is None:
                address = await self.state.affinity(self.pool.tier, tenant, session_id)
            await self.state.drop_affinity(self.pool.tier, tenant, session_id)
        except TandemError as exc:  # the binding expires by itself
            logger.debug("dropping the affinity of %s failed: %s", session_id, exc)
        return address


def _prompt(request: common_pb2.TierGenerateRequest) -> Sequence[int]:
    return request.prompt_tokens.ids if request.HasField("prompt_tokens") else ()


class ReplicaTiers:
    """The ``Tiers`` protocol over an edge pool and a cloud pool."""

    def __init__(self, edge: ReplicaPool[GrpcEdge], cloud: ReplicaPool[GrpcCloud],
                 state: StateStore, affinity_ttl_s: float) -> None:
        self.edge = edge
        self.cloud = cloud
        self.edge_sessions = SessionAffinity(edge, state, affinity_ttl_s)
        self.cloud_sessions = SessionAffinity(cloud, state, affinity_ttl_s)

    @classmethod
    def connect(cls, config: RouterConfig, state: StateStore, metrics: ReplicaMetrics,
                security: ChannelSecurity) -> ReplicaTiers:
        def pool(tier: str, spec: str, factory: Callable[[str], C]) -> ReplicaPool[C]:
            return ReplicaPool(tier, Targets.parse(spec), factory, metrics,
                               PrefixBalancer(config.balance_epsilon),
                               config.replica_resolve_seconds)

        rtt_s = config.inject_cloud_rtt_ms / 1000
        return cls(pool("edge", config.edge_address, connect_with(GrpcEdge, security=security)),
                   pool("cloud", config.cloud_address,
                        connect_with(GrpcCloud, rtt_s=rtt_s, security=security)),
                   state, config.session_affinity_seconds)

    # -- edge ----------------------------------------------------------------------------
    def edge_load(self) -> common_pb2.TierLoad | None:
        return self.edge.load(lambda client: client.edge_load())

    async def edge_generate(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                            timings: common_pb2.Timings) -> common_pb2.TierGenerateResponse:
        return await self.edge.unary(request.tenant, _prompt(request), "generate",
                                     lambda c: c.edge_generate(request, deadline, timings))

    def edge_stream(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                    timings: common_pb2.Timings) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        return self.edge.stream(request.tenant, _prompt(request), "stream",
                                lambda c: c.edge_stream(request, deadline, timings))

    async def draft(self, request: edge_pb2.DraftRequest, deadline: Deadline,
                    timings: common_pb2.Timings) -> edge_pb2.DraftResponse:
        return await self.edge_sessions.call(request.tenant, request.session_id, request.tokens,
                                             "draft", lambda c: c.draft(request, deadline, timings))

    # -- cloud ---------------------------------------------------------------------------
    def cloud_load(self) -> common_pb2.TierLoad | None:
        return self.cloud.load(lambda client: client.cloud_load())

    def cloud_stream(self, request: common_pb2.TierGenerateRequest, deadline: Deadline,
                     timings: common_pb2.Timings) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        return self.cloud.stream(request.tenant, _prompt(request), "stream",
                                 lambda c: c.cloud_stream(request, deadline, timings))

    async def verify(self, request: cloud_pb2.VerifyRequest, deadline: Deadline,
                     timings: common_pb2.Timings) -> cloud_pb2.VerifyResponse:
        sessions = self.cloud_sessions
        reply = await sessions.call(request.tenant, request.session_id, request.tokens,
                                    "verify", lambda c: c.verify(request, deadline, timings))
        previous = sessions.swap_length(request.tenant, request.session_id, len(request.tokens))
        if previous is not None and reply.cached_tokens < previous:
            self.cloud.metrics.kv_misses.inc()
        return reply

    async def end_session(self, tenant: str, session_id: str) -> None:
        await self.edge_sessions.release(tenant, session_id)
        address = await self.cloud_sessions.release(tenant, session_id)
        await self.cloud.replicas()
        replica = self.cloud.get(address) if address else None
        if replica is not None:
            await replica.client.end_session(tenant, session_id)

    async def readiness(self) -> dict[str, str]:
        """Each tier's "SERVING" (a replica serves) or why not: what GET /ready reports."""
        return {"edge": await self.edge.readiness(), "cloud": await self.cloud.readiness()}

    async def close(self) -> None:
        await self.edge.close()
        await self.cloud.close()
