"""The local stack (redis, cloud, edge, router) as child processes: started in dependency
order, supervised (a crashed child is restarted with backoff), stopped in reverse order.
`tandem up`, `tandem loadtest --up` and the benchmarks use it."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tandem.shared.process import RedisProcess, ServiceProcess, free_port

# Cloud start converts the GGUF once (~40 s on 2 cores); later starts read the cache.
READY_TIMEOUT_S = 600.0
# A crashed child is restarted after 1 s, then 2, 4, ... up to 30 s while it keeps
# crashing; a child that stayed up for a minute starts again from 1 s.
RESTART_BACKOFF_S = (1.0, 30.0)
STABLE_AFTER_S = 60.0


@dataclass
class StackSettings:
    """Where the local stack listens and how it is configured."""

    config: str | None = None  # TOML file with [cloud], [edge] and [router] sections
    host: str = "127.0.0.1"
    router_port: int = 50051
    cloud_port: int = 50052
    edge_port: int = 50053
    redis_port: int = 6390
    http_port: int = 8000  # the router's OpenAI-compatible HTTP API; -1: off
    use_redis: bool = True  # when redis-server is installed; else the in-memory store
    # Replicas per tier: the first listens on the tier's port, the others on free ports
    # chosen at start (fixed for the stack's life, so a restarted replica comes back
    # where the router looks for it).
    cloud_replicas: int = 1
    edge_replicas: int = 1

    def __post_init__(self) -> None:
        if self.cloud_replicas < 1 or self.edge_replicas < 1:
            raise ValueError("cloud_replicas and edge_replicas must be >= 1")

    @classmethod
    def on_free_ports(cls, config: str | None = None, cloud_replicas: int = 1,
                      edge_replicas: int = 1) -> StackSettings:
        return cls(config=config, router_port=free_port(), cloud_port=free_port(),
                   edge_port=free_port(), redis_port=free_port(), http_port=free_port(),
                   cloud_replicas=cloud_replicas, edge_replicas=edge_replicas)


class LocalStack:
    """Starts the services, and stops what it started in reverse order."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.workdir = Path(tempfile.mkdtemp(prefix="tandem-up-"))
        self.redis: RedisProcess | None = None
        self.services: list[ServiceProcess] = []
        self.labels: list[str] = []  # per service: "cloud", "cloud-2", ... (replicas)

    def _common(self, port: int) -> list[str]:
        extra = ["--config", self.settings.config] if self.settings.config else []
        return [*extra, "--host", self.settings.host, "--port", str(port)]

    def start(self) -> None:
        state = "memory"
        if self.settings.use_redis and shutil.which("redis-server"):
            self.redis = RedisProcess(self.settings.redis_port, self.workdir, durable=True)
            self.redis.wait_ready()
            state = self.redis.url
        else:
            print("state store: in-memory (redis-server not used); sessions live in the router "
                  "process only", file=sys.stderr, flush=True)
        a = self.settings
        clouds = self._replicas("cloud", a.cloud_port, a.cloud_replicas)
        edges = self._replicas("edge", a.edge_port, a.edge_replicas)
        print(f"starting {len(clouds)} cloud and {len(edges)} edge (logs in {self.workdir}) ...",
              file=sys.stderr, flush=True)
        for service in [*clouds, *edges]:
            service.wait_ready(READY_TIMEOUT_S)
        router = self._add("router", [
            *self._common(a.router_port),
            "--cloud-address", ",".join(c.address for c in clouds),
            "--edge-address", ",".join(e.address for e in edges), "--state", state,
            "--http-port", str(a.http_port)])
        router.wait_ready(READY_TIMEOUT_S)

    def _add(self, name: str, args: list[str], label: str = "") -> ServiceProcess:
        """Start `tandem serve NAME`; replicas get a folder each (ready file, log)."""
        label = label or name
        workdir = self.workdir if label == name else self.workdir / label
        workdir.mkdir(exist_ok=True)
        service = ServiceProcess(name, args, workdir)
        self.services.append(service)
        self.labels.append(label)
        return service

    def _replicas(self, name: str, port: int, count: int) -> list[ServiceProcess]:
        ports = [port, *(free_port() for _ in range(count - 1))]
        return [self._add(name, self._common(p), name if i == 0 else f"{name}-{i + 1}")
                for i, p in enumerate(ports)]

    def named(self) -> dict[str, ServiceProcess]:
        """Label -> service ("cloud", "cloud-2", ..., "edge", "router")."""
        return dict(zip(self.labels, self.services))

    def describe(self) -> str:
        rows = [f"  {label:<7} {s.address:<22} metrics :{s.metrics_port}"
                for label, s in self.named().items()]
        rows += [f"  {'openai':<7} {s.http_url}/v1  (OpenAI-compatible HTTP API)"
                 for s in self.services if s.http_url]
        if self.redis:
            rows.append(f"  {'redis':<7} {self.redis.url}")
        return "\n".join(rows)

    @property
    def router_address(self) -> str:
        return self.services[-1].address

    def children(self) -> list[ServiceProcess | RedisProcess]:
        return [*([self.redis] if self.redis else []), *self.services]

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        if self.redis:
            self.redis.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Supervisor:
    """Restarts children that died, with exponential backoff, so one crashed service does
    not take the stack down (the others keep serving; the router's health watch and
    retries see it come back)."""

    def __init__(self, children: list[ServiceProcess | RedisProcess]) -> None:
        self.children = children
        self._delay = {id(c): RESTART_BACKOFF_S[0] for c in children}
        self._started = {id(c): time.monotonic() for c in children}
        self._due: dict[int, float] = {}

    def check(self) -> None:
        now = time.monotonic()
        for child in self.children:
            key = id(child)
            if child.proc.poll() is None:
                if now - self._started[key] > STABLE_AFTER_S:
                    self._delay[key] = RESTART_BACKOFF_S[0]
                continue
            name = getattr(child, "name", "redis")
            if key not in self._due:
                self._due[key] = now + self._delay[key]
                print(f"tandem up: {name} exited with code {child.proc.returncode}; "
                      f"restarting in {self._delay[key]:.0f} s", file=sys.stderr, flush=True)
            elif now >= self._due[key]:
                del self._due[key]
                child.restart()
                self._started[key] = now
                self._delay[key] = min(self._delay[key] * 2, RESTART_BACKOFF_S[1])
                print(f"tandem up: {name} restarted", file=sys.stderr, flush=True)
