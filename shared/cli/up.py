"""`tandem up`: the whole local stack (redis, cloud, edge, router) in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from tandem.shared.process import ServiceFailed
from tandem.shared.stack import LocalStack, StackSettings, Supervisor


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="Run the local stack (redis, cloud, edge, router).")
    p.add_argument("--config", help="TOML file with [cloud], [edge] and [router] sections.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--router-port", type=int, default=50051)
    p.add_argument("--cloud-port", type=int, default=50052)
    p.add_argument("--edge-port", type=int, default=50053)
    p.add_argument("--redis-port", type=int, default=6390)
    p.add_argument("--http-port", type=int, default=8000,
                   help="The router's OpenAI-compatible HTTP API (-1: off).")
    p.add_argument("--cloud-replicas", type=int, default=1,
                   help="Cloud replicas behind the router (the first on --cloud-port, the "
                        "others on free ports); each loads the model and uses --threads.")
    p.add_argument("--edge-replicas", type=int, default=1, help="Edge replicas, likewise.")
    p.add_argument("--no-redis", action="store_true",
                   help="Use the in-memory state store even if redis-server is available.")
    p.add_argument("--ask", metavar="PROMPT",
                   help="Once ready, answer PROMPT through the router, then shut down.")
    p.add_argument("--policy", default="auto", help="Policy for --ask.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    stack = LocalStack(StackSettings(
        config=args.config, host=args.host, router_port=args.router_port,
        cloud_port=args.cloud_port, edge_port=args.edge_port, redis_port=args.redis_port,
        http_port=args.http_port, use_redis=not args.no_redis,
        cloud_replicas=args.cloud_replicas, edge_replicas=args.edge_replicas))
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
