"""The stack the chaos scenarios run against.

``Target`` is what any stack offers (addresses, metrics ports, API keys): enough for the
scenarios that only send traffic. ``ChaosStack`` starts its own stack the way a careful
deployment runs it (Redis with an append-only file, tiers that answer only the router's
internal token, a router with API keys), with a fault proxy on each router-to-tier link,
and can kill, freeze, stop and restart each part: the scenarios that break things need it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from tandem.loadtests.chaos.proxy import FaultProxy
from tandem.loadtests.run import scrape
from tandem.shared.process import RedisProcess, ServiceProcess, free_port, health_status

READY_TIMEOUT_S = 600.0
# Many users, each its own tenant: the storm and the overload send as these (the cap is
# per tenant, so the load they put on the tiers is many tenants' load).
CROWD = tuple(f"user-{i}" for i in range(64))
TENANTS = ("alice", "bob", "mallory", "fuzz", "soak", "load", *CROWD)
# Requests one tenant may have in flight on the router, as a shared deployment sets it
# (--tenant-max-concurrency): a flooding tenant cannot fill the tiers' batch.
TENANT_CAP = 4


@dataclass
class Target:
    """A running stack as the scenarios see it."""

    router: str  # the router's gRPC address
    cloud: str = ""  # the tiers' own addresses (bypassing the router and any proxy)
    edge: str = ""
    metrics: dict[str, int] = field(default_factory=dict)  # service -> metrics port
    keys: dict[str, str] = field(default_factory=dict)  # tenant -> API key (empty: open)
    internal_token: str | None = None
    redis_url: str | None = None
    host: str = "127.0.0.1"

    def metadata(self, tenant: str) -> tuple[tuple[str, str], ...]:
        """The call metadata of a request made as ``tenant`` (its key, when keys are on)."""
        key = self.keys.get(tenant)
        return (("authorization", f"Bearer {key}"),) if key else ()

    def tier_metadata(self) -> tuple[tuple[str, str], ...]:
        """What the router sends the tiers (the internal token), for direct tier calls."""
        token = self.internal_token
        return (("x-tandem-internal-token", token),) if token else ()

    def scrape(self, service: str) -> dict[str, float]:
        return scrape(f"{self.host}:{self.metrics[service]}")

    def can_break(self) -> bool:
        """Whether this stack's processes can be killed and restarted here."""
        return False


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        sample, _, rest = key.partition("{")
        if sample == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def write_keys(folder: Path, tenants: tuple[str, ...]) -> tuple[Path, dict[str, str]]:
    """A keys file for ``tenants`` (one fresh key each) and the keys themselves."""
    keys = {tenant: f"tk-{tenant}-{secrets.token_hex(12)}" for tenant in tenants}
    lines = [f'[keys.{hashlib.sha256(key.encode()).hexdigest()}]\ntenant = "{tenant}"\n'
             for tenant, key in keys.items()]
    path = folder / "keys.toml"
    path.write_text("\n".join(lines))
    return path, keys


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class ChaosStack(Target):
    """Redis (AOF), cloud and edge (internal token), router (API keys, per-tenant
    concurrency cap) through proxies."""

    def __init__(self, router_args: tuple[str, ...] = (), tier_args: tuple[str, ...] = (),
                 workdir: Path | None = None) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tandem-chaos-"))
        keys_file, keys = write_keys(self.workdir, TENANTS)
        super().__init__(router="", keys=keys, internal_token=secrets.token_hex(16))
        self.redis = RedisProcess(free_port(), self.workdir, durable=True)
        self.redis_url = self.redis.url
        self.processes: dict[str, ServiceProcess] = {}
        self.proxies: dict[str, FaultProxy] = {}
        self._router_args = ["--tenant-max-concurrency", str(TENANT_CAP), *router_args,
                             "--api-keys", str(keys_file)]
        self._tier_args = list(tier_args)

    def can_break(self) -> bool:
        return True

    def start(self) -> ChaosStack:
        self.redis.wait_ready()
        for tier in ("cloud", "edge"):
            self._service(tier, self._tier_args)
        for tier in ("cloud", "edge"):
            self.processes[tier].wait_ready(READY_TIMEOUT_S)
            self.proxies[tier] = FaultProxy(self.processes[tier].address).start()
        self.cloud, self.edge = self.processes["cloud"].address, self.processes["edge"].address
        self._service("router", ["--cloud-address", self.proxies["cloud"].address,
                                 "--edge-address", self.proxies["edge"].address,
                                 "--state", self.redis.url, *self._router_args])
        self.processes["router"].wait_ready(READY_TIMEOUT_S)
        self.router = self.processes["router"].address
        self._refresh_metrics()
        return self

    def _service(self, name: str, args: list[str]) -> None:
        self.processes[name] = ServiceProcess(name, [
            "--port", str(free_port()), "--metrics-port", "0",
            "--internal-token", str(self.internal_token), *args], self.workdir)

    def _refresh_metrics(self) -> None:
        self.metrics = {n: int(p.metrics_port or 0) for n, p in self.processes.items()}

    def pid(self, name: str) -> int:
        return self.redis.proc.pid if name == "redis" else self.processes[name].proc.pid

    def signal(self, name: str, sig: signal.Signals) -> None:
        os.kill(self.pid(name), sig)

    def wait_exit(self, name: str, timeout_s: float) -> int | None:
        proc = self.redis.proc if name == "redis" else self.processes[name].proc
        try:
            return proc.wait(timeout_s)
        except Exception:  # noqa: BLE001 - still running: the caller decides
            return None

    def restart(self, name: str) -> float:
        """Start a stopped or killed service again (same port); returns the time it took
        to be SERVING (Redis: to answer PING)."""
        started = time.monotonic()
        if name == "redis":
            self.redis.restart()
            self.redis.wait_ready(60)
        else:
            self.processes[name].restart()
            self.processes[name].wait_ready(READY_TIMEOUT_S)
            self._refresh_metrics()
        return time.monotonic() - started

    def serving(self, name: str) -> bool:
        try:
            return health_status(self.processes[name].address, 1.0) == \
                health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def log(self, name: str) -> str:
        path = self.redis.log_path if name == "redis" else self.processes[name].log_path
        return path.read_text(errors="replace")

    def stop(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()
        for name in ("router", "edge", "cloud"):
            if name in self.processes:
                self.processes[name].stop()
        self.redis.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
