"""`tandem up`: the whole local stack (redis, cloud, edge, router) in the foreground."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from tandem.shared.process import RedisProcess, ServiceFailed, ServiceProcess

# Cloud start converts the GGUF once (~40 s on 2 cores); later starts read the cache.
READY_TIMEOUT_S = 600.0
# A crashed child is restarted after 1 s, then 2, 4, ... up to 30 s while it keeps
# crashing; a child that stayed up for a minute starts again from 1 s.
RESTART_BACKOFF_S = (1.0, 30.0)
STABLE_AFTER_S = 60.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="Run the local stack (redis, cloud, edge, router).")
    p.add_argument("--config", help="TOML file with [cloud], [edge] and [router] sections.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--router-port", type=int, default=50051)
    p.add_argument("--cloud-port", type=int, default=50052)
    p.add_argument("--edge-port", type=int, default=50053)
    p.add_argument("--redis-port", type=int, default=6390)
    p.add_argument("--no-redis", action="store_true",
                   help="Use the in-memory state store even if redis-server is available.")
    p.add_argument("--ask", metavar="PROMPT",
                   help="Once ready, answer PROMPT through the router, then shut down.")
    p.add_argument("--policy", default="auto", help="Policy for --ask.")
    p.set_defaults(run=run)


class LocalStack:
    """Starts the services, and stops what it started in reverse order."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="tandem-up-"))
        self.redis: RedisProcess | None = None
        self.services: list[ServiceProcess] = []

    def _common(self, port: int) -> list[str]:
        extra = ["--config", self.args.config] if self.args.config else []
        return [*extra, "--host", self.args.host, "--port", str(port)]

    def start(self) -> None:
        state = "memory"
        if not self.args.no_redis and shutil.which("redis-server"):
            self.redis = RedisProcess(self.args.redis_port, self.workdir, durable=True)
            self.redis.wait_ready()
            state = self.redis.url
        else:
            print("state store: in-memory (redis-server not used); sessions live in the router "
                  "process only", file=sys.stderr, flush=True)
        a = self.args
        cloud = ServiceProcess("cloud", self._common(a.cloud_port), self.workdir)
        edge = ServiceProcess("edge", self._common(a.edge_port), self.workdir)
        self.services += [cloud, edge]
        print(f"starting cloud and edge (logs in {self.workdir}) ...", file=sys.stderr, flush=True)
        cloud.wait_ready(READY_TIMEOUT_S)
        edge.wait_ready(READY_TIMEOUT_S)
        router = ServiceProcess("router", [
            *self._common(a.router_port), "--cloud-address", cloud.address,
            "--edge-address", edge.address, "--state", state], self.workdir)
        self.services.append(router)
        router.wait_ready(READY_TIMEOUT_S)

    def describe(self) -> str:
        rows = [f"  {s.name:<7} {s.address:<22} metrics :{s.metrics_port}" for s in self.services]
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


def run(args: argparse.Namespace) -> int:
    stack = LocalStack(args)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    try:
        stack.start()
        print(f"tandem stack ready (every service SERVING):\n{stack.describe()}", flush=True)
        if args.ask:
            from tandem.shared.cli.ask import ask_and_print

            return ask_and_print(stack.router_address, args.ask, policy=args.policy)
        print("press Ctrl-C to stop", flush=True)
        supervisor = Supervisor(stack.children())
        while not stopping.wait(0.5):
            supervisor.check()
        return 0
    except ServiceFailed as exc:
        print(f"tandem up: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping the stack ...", file=sys.stderr, flush=True)
        stack.stop()


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
