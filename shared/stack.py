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

    @classmethod
    def on_free_ports(cls, config: str | None = None) -> StackSettings:
        return cls(config=config, router_port=free_port(), cloud_port=free_port(),
                   edge_port=free_port(), redis_port=free_port(), http_port=free_port())


class LocalStack:
    """Starts the services, and stops what it started in reverse order."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.workdir = Path(tempfile.mkdtemp(prefix="tandem-up-"))
        self.redis: RedisProcess | None = None
        self.services: list[ServiceProcess] = []

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
        cloud = ServiceProcess("cloud", self._common(a.cloud_port), self.workdir)
        edge = ServiceProcess("edge", self._common(a.edge_port), self.workdir)
        self.services += [cloud, edge]
        print(f"starting cloud and edge (logs in {self.workdir}) ...", file=sys.stderr, flush=True)
        cloud.wait_ready(READY_TIMEOUT_S)
        edge.wait_ready(READY_TIMEOUT_S)
        router = ServiceProcess("router", [
            *self._common(a.router_port), "--cloud-address", cloud.address,
            "--edge-address", edge.address, "--state", state,
            "--http-port", str(a.http_port)], self.workdir)
        self.services.append(router)
        router.wait_ready(READY_TIMEOUT_S)

    def describe(self) -> str:
        rows = [f"  {s.name:<7} {s.address:<22} metrics :{s.metrics_port}" for s in self.services]
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
