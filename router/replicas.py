"""The replicas of one tier as the router sees them: who they are, whether they serve,
how busy this router keeps them, and calls that fail over between them.

A tier's address is a comma-separated list of ``host:port`` (fixed replicas) or one
``dns:///name:port``: a name that resolves to many addresses (a Kubernetes headless
Service), re-resolved every ``resolve_interval_s``. Each replica has its own client
(one channel) and a ``grpc.health.v1`` Watch on it; a replica that is not SERVING, or
unreachable, gets no new calls while another serves. New calls are placed by
``PrefixBalancer`` (balance.py). A call that fails UNAVAILABLE before its first token is
retried once on another replica; a stream that loses its replica after that ends
UNAVAILABLE (counted), its deadline bounding it as every call's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.router.balance import PrefixBalancer
from tandem.router.metrics import ReplicaMetrics
from tandem.shared.errors import Unavailable
from tandem.shared.grpc_server import CHANNEL_OPTIONS
from tandem.shared.log import log_event

logger = logging.getLogger(__name__)
T = TypeVar("T")

DNS_SCHEME = "dns:///"
RESOLVE_INTERVAL_S = 5.0
HEALTH_RETRY_S = 0.5
READY_CHECK_TIMEOUT_S = 2.0  # after a Watch ends (replica down), ask again this often
# Replica channels reconnect within 2 s of a replica coming back (gRPC's default backoff
# grows to 120 s, which would keep a restarted replica idle for minutes).
REPLICA_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.initial_reconnect_backoff_ms", 250),
                           ("grpc.min_reconnect_backoff_ms", 250),
                           ("grpc.max_reconnect_backoff_ms", 2000)]


class Client(Protocol):
    """What a pool needs of a replica's client (GrpcCloud, GrpcEdge)."""

    channel: grpc.aio.Channel

    async def close(self) -> None: ...


C = TypeVar("C", bound=Client)


@dataclass(frozen=True)
class Targets:
    """Where a tier's replicas are: fixed addresses, or a DNS name to resolve."""

    addresses: tuple[str, ...] = ()
    dns: str = ""  # "name:port"

    @classmethod
    def parse(cls, spec: str) -> Targets:
        """``host:port[,host:port...]`` or ``dns:///name:port``."""
        spec = spec.strip()
        if spec.startswith(DNS_SCHEME):
            name = spec[len(DNS_SCHEME):]
            _split_port(name)
            return cls(dns=name)
        addresses = tuple(a.strip() for a in spec.split(",") if a.strip())
        if not addresses:
            raise ValueError("no address given")
        for address in addresses:
            if address.startswith(DNS_SCHEME):
                raise ValueError(f"{DNS_SCHEME} names one DNS name, not a list: {spec!r}")
            _split_port(address)
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"an address is listed twice: {spec!r}")
        return cls(addresses=addresses)

    @property
    def single(self) -> bool:
        """One fixed replica: nothing to balance, fail over to, or agree on."""
        return not self.dns and len(self.addresses) == 1


def _split_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


async def resolve(name: str) -> list[str]:
    """Every address ``name`` ("host:port") resolves to, as sorted ``ip:port``."""
    host, port = _split_port(name)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({f"[{i[4][0]}]:{port}" if ":" in i[4][0] else f"{i[4][0]}:{port}"
                   for i in infos})


@dataclass(eq=False)
class Replica(Generic[C]):
    address: str
    client: C
    healthy: bool = True  # until its health watch says otherwise
    in_flight: int = 0
    watch: asyncio.Task[None] | None = field(default=None, repr=False)


class ReplicaPool(Generic[C]):
    """The replicas of one tier, kept current (DNS) and watched (health)."""

    def __init__(self, tier: str, targets: Targets, connect: Callable[[str], C],
                 metrics: ReplicaMetrics, balancer: PrefixBalancer | None = None,
                 resolve_interval_s: float = RESOLVE_INTERVAL_S, watch_health: bool = True,
                 resolver: Callable[[str], Awaitable[list[str]]] = resolve) -> None:
        self.tier = tier
        self.targets = targets
        self.balancer = balancer or PrefixBalancer()
        self.metrics = metrics
        self._connect = connect
        self._resolve_interval_s = resolve_interval_s
        self._watch_health = watch_health
        self._resolver = resolver
        self._replicas: dict[str, Replica[C]] = {}
        self._retired: list[Replica[C]] = []
        self._started = False
        self._refresh: asyncio.Task[None] | None = None

    # -- membership --------------------------------------------------------------------
    async def replicas(self) -> list[Replica[C]]:
        """The current replicas (resolved on first use, inside the event loop)."""
        if not self._started:
            self._started = True
            if self.targets.dns:
                await self._update(await self._resolver(self.targets.dns))
                self._refresh = asyncio.get_running_loop().create_task(self._keep_resolving())
            else:
                await self._update(list(self.targets.addresses))
        return list(self._replicas.values())

    def get(self, address: str) -> Replica[C] | None:
        return self._replicas.get(address)

    async def _keep_resolving(self) -> None:
        while True:
            await asyncio.sleep(self._resolve_interval_s)
            try:
                await self._update(await self._resolver(self.targets.dns))
            except OSError as exc:  # keep the replicas we know until DNS answers again
                log_event(logger, "replica resolution failed", level=logging.WARNING,
                          tier=self.tier, name=self.targets.dns, error=str(exc))

    async def _update(self, addresses: Iterable[str]) -> None:
        wanted = set(addresses)
        for address in sorted(wanted - set(self._replicas)):
            replica = Replica(address, self._connect(address))
            self._replicas[address] = replica
            self.metrics.healthy.labels(self.tier, address).set(1)
            if self._watch_health:
                replica.watch = asyncio.get_running_loop().create_task(self._watch(replica))
            log_event(logger, "replica added", tier=self.tier, replica=address)
        for address in sorted(set(self._replicas) - wanted):
            replica = self._replicas.pop(address)
            self.balancer.forget(address)
            log_event(logger, "replica removed", tier=self.tier, replica=address)
            self._retired.append(replica)  # closed once its last call is done
        await self._close_idle_retired()

    async def _close_idle_retired(self) -> None:
        for replica in [r for r in self._retired if r.in_flight == 0]:
            self._retired.remove(replica)
            await self._close(replica)

    async def _close(self, replica: Replica[C]) -> None:
        if replica.watch is not None:
            replica.watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replica.watch
        for gauge in (self.metrics.healthy, self.metrics.in_flight):
            with contextlib.suppress(KeyError):
                gauge.remove(self.tier, replica.address)
        await replica.client.close()

    async def _watch(self, replica: Replica[C]) -> None:
        """Follow the replica's grpc.health.v1 status; down while unreachable."""
        stub = health_pb2_grpc.HealthStub(replica.client.channel)
        while True:
            try:
                async for reply in stub.Watch(health_pb2.HealthCheckRequest(service="")):
                    self._set_health(replica, reply.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.aio.AioRpcError as exc:
                logger.debug("health watch of %s ended: %s", replica.address, exc.code().name)
            self._set_health(replica, False)
            await asyncio.sleep(HEALTH_RETRY_S)

    def _set_health(self, replica: Replica[C], serving: bool) -> None:
        if serving != replica.healthy:
            log_event(logger, "replica serving" if serving else "replica not serving",
                      level=logging.INFO if serving else logging.WARNING, tier=self.tier,
                      replica=replica.address)
        replica.healthy = serving
        self.metrics.healthy.labels(self.tier, replica.address).set(1 if serving else 0)

    # -- choosing --------------------------------------------------------------------
    async def choose(self, tenant: str, tokens: Sequence[int],
                     exclude: Iterable[str] = ()) -> Replica[C] | None:
        """The replica for a new call with this prompt (healthy ones first; when none is
        healthy, any: the call then fails with the tier's own error, or works because
        the health reading was late); None when there is none besides ``exclude``."""
        replicas = await self.replicas()
        excluded = set(exclude)
        candidates = [r for r in replicas if r.address not in excluded]
        healthy = [r for r in candidates if r.healthy] or candidates
        if not healthy:
            return None
        address = self.balancer.choose(tenant, tokens, {r.address: r.in_flight for r in healthy},
                                       list(self._replicas))
        return self._replicas[address]

    def load(self, reading: Callable[[C], T | None]) -> T | None:
        """The least waiting healthy replica's latest load (None while none is known)."""
        readings = [x for r in self._replicas.values() if r.healthy
                    for x in [reading(r.client)] if x is not None]
        return min(readings, key=lambda load: load.estimated_wait_ms, default=None)  # type: ignore[attr-defined]

    # -- calling -----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def track(self, replica: Replica[C], method: str) -> AsyncIterator[None]:
        """Count a call on ``replica`` (in flight while the block runs)."""
        replica.in_flight += 1
        self.metrics.requests.labels(self.tier, replica.address, method).inc()
        gauge = self.metrics.in_flight.labels(self.tier, replica.address)
        gauge.inc()
        try:
            yield
        finally:
            replica.in_flight -= 1
            if replica in self._retired:
                await self._close_idle_retired()
            else:
                gauge.dec()

    async def _first(self, tenant: str, tokens: Sequence[int]) -> Replica[C]:
        replica = await self.choose(tenant, tokens)
        if replica is None:
            raise Unavailable(f"{self.tier}: unavailable: no replica (targets {self.describe()})")
        return replica

    async def unary(self, tenant: str, tokens: Sequence[int], method: str,
                    call: Callable[[C], Awaitable[T]]) -> T:
        """``call`` on the chosen replica; on UNAVAILABLE once more on another."""
        replica = await self._first(tenant, tokens)
        try:
            async with self.track(replica, method):
                return await call(replica.client)
        except Unavailable:
            other = await self.choose(tenant, tokens, exclude=[replica.address])
            if other is None:
                raise
            self.metrics.failovers.labels(self.tier, method).inc()
            async with self.track(other, method):
                return await call(other.client)

    async def stream(self, tenant: str, tokens: Sequence[int], method: str,
                     call: Callable[[C], AsyncIterator[T]]) -> AsyncIterator[T]:
        """``call``'s stream from the chosen replica; one that fails UNAVAILABLE before its
        first item is opened again on another, one that fails after it ends so (counted)."""
        replica: Replica[C] | None = await self._first(tenant, tokens)
        tried: list[str] = []
        while replica is not None:
            tried.append(replica.address)
            started = False
            try:
                async with self.track(replica, method), contextlib.aclosing(
                        call(replica.client)) as items:
                    async for item in items:
                        started = True
                        yield item
                return
            except Unavailable:
                if started:
                    self.metrics.streams_lost.labels(self.tier).inc()
                    raise
                if len(tried) > 1:
                    raise
                replica = await self.choose(tenant, tokens, exclude=tried)
                if replica is None:
                    raise
                self.metrics.failovers.labels(self.tier, method).inc()

    async def readiness(self) -> str:
        """"SERVING" when a replica says so (a Check now, not the watch's last word), else
        each replica's status."""
        statuses = await asyncio.gather(*(_check(r.client.channel)
                                          for r in await self.replicas()))
        if "SERVING" in statuses:
            return "SERVING"
        return "; ".join(f"{r.address} {s}" for r, s in zip(self._replicas.values(), statuses)) \
            or f"no replica ({self.describe()})"

    def describe(self) -> str:
        return f"{DNS_SCHEME}{self.targets.dns}" if self.targets.dns else ",".join(
            self.targets.addresses)

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        for replica in [*self._replicas.values(), *self._retired]:
            await self._close(replica)
        self._replicas.clear()
        self._retired.clear()


async def _check(channel: grpc.aio.Channel) -> str:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=READY_CHECK_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return f"UNREACHABLE ({exc.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def connect_with(factory: Callable[..., C], **kwargs: Any) -> Callable[[str], C]:
    """A pool's ``connect``: ``factory(address, options=REPLICA_CHANNEL_OPTIONS, **kwargs)``."""
    return lambda address: factory(address, options=REPLICA_CHANNEL_OPTIONS, **kwargs)
