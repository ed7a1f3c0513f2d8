"""Running one load test: locust headless in a child process (its own gevent world), the
services' Prometheus counters and CPU time read before and after, and the summary.

`tandem loadtest` and the sweep call `run_load_test`; the stack is either already running
(addresses given) or started here by `start_stack` and stopped by the caller.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tandem.loadtests.report import load_records, summarize

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USER_CLASSES = {"router": "RouterUser", "cloud": "CloudUser", "openai": "OpenAIUser"}


@dataclass
class LoadTest:
    """One run's settings (the CLI flags of `tandem loadtest`)."""

    target: str
    address: str
    users: int
    requests: int | None = None
    duration_s: float | None = None
    policy: str = ""
    prompts: str = "mixed"
    mix: str = ""
    chats: str = ""
    chat_users: int = 0  # how many of `users` run multi-turn chats (RouterChatUser)
    chat_policy: str = ""
    max_tokens: int = 64
    temperature: float | None = None
    request_rate: float | None = None
    seed: int = 0
    timeout_s: float = 300.0
    slos: dict[str, float] = field(default_factory=dict)
    output_dir: str | None = None  # locust CSV/HTML and the records land here

    def __post_init__(self) -> None:
        if (self.requests is None) == (self.duration_s is None):
            raise ValueError("give exactly one of requests or duration")
        if self.users < 1 or (self.requests is not None and self.requests < 1):
            raise ValueError("users and requests must be >= 1")
        if self.chat_users and self.target != "router":
            raise ValueError("chat users (sessions) need --target router")
        if not 0 <= self.chat_users <= self.users:
            raise ValueError("chat users must be between 0 and users")


def locust_command(test: LoadTest, out: Path) -> list[str]:
    classes = ([USER_CLASSES[test.target]] if test.chat_users < test.users else []) + (
        ["RouterChatUser"] if test.chat_users else [])
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
           "-u", str(test.users), "-r", str(test.users), "-H", test.address,
           "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
           "--only-summary", "--loglevel", "WARNING", "--stop-timeout", str(int(test.timeout_s)),
           "--tandem-target", test.target, "--tandem-prompts", test.prompts,
           "--tandem-max-tokens", str(test.max_tokens), "--tandem-seed", str(test.seed),
           "--tandem-timeout", str(test.timeout_s), "--tandem-records", str(out / "records.jsonl"),
           "--tandem-chat-users", str(test.chat_users)]
    optional = {"--tandem-policy": test.policy, "--tandem-mix": test.mix,
                "--tandem-chats": test.chats, "--tandem-chat-policy": test.chat_policy,
                "--tandem-temperature": test.temperature,
                "--tandem-request-rate": test.request_rate, "--tandem-requests": test.requests,
                "--run-time": f"{int(test.duration_s)}s" if test.duration_s else None}
    for flag, value in optional.items():
        if value not in (None, ""):
            cmd += [flag, str(value)]
    return cmd + classes


def scrape(address: str) -> dict[str, float]:
    """Every sample of a Prometheus endpoint, keyed 'name{label="v",...}' (labels sorted)."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def counter_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Non-zero changes of _total counters (what this run did to the service)."""
    return {k: round(v - before.get(k, 0.0), 6) for k, v in after.items()
            if "_total{" in k and v != before.get(k, 0.0)}


class CpuMeter:
    """CPU seconds of service processes over a run, as average cores busy, and their
    resident memory before and after it."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.started = time.monotonic()
        self.cpu0 = {name: self._cpu(p) for name, p in self.procs.items()}
        self.rss_before = self.rss_mb()

    def rss_mb(self) -> dict[str, float]:
        return {name: round(p.memory_info().rss / 2**20, 1) for name, p in self.procs.items()}

    @staticmethod
    def _cpu(proc: Any) -> float:
        t = proc.cpu_times()
        return float(t.user + t.system)

    def cores_busy(self) -> dict[str, float]:
        wall = time.monotonic() - self.started
        return {name: round((self._cpu(p) - self.cpu0[name]) / wall, 3)
                for name, p in self.procs.items()}


def run_load_test(test: LoadTest, metrics: dict[str, str] | None = None,
                  pids: dict[str, int] | None = None) -> dict[str, Any]:
    """Run locust, then summarize; `metrics` (service -> host:port of /metrics) adds the
    services' counter deltas, `pids` their average CPU cores busy."""
    out = Path(test.output_dir or tempfile.mkdtemp(prefix="tandem-loadtest-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "records.jsonl").unlink(missing_ok=True)
    before = {name: scrape(addr) for name, addr in (metrics or {}).items()}
    meter = CpuMeter(pids) if pids else None
    proc = subprocess.run(locust_command(test, out), capture_output=True, text=True)
    summary = summarize(load_records(out / "records.jsonl"), test.slos)
    summary["config"] = {"target": test.target, "users": test.users, "requests": test.requests,
                         "duration_s": test.duration_s, "policy": test.policy or "default",
                         "max_tokens": test.max_tokens, "request_rate": test.request_rate,
                         "prompts": test.prompts, "mix": test.mix, "chat_users": test.chat_users,
                         "seed": test.seed}
    server: dict[str, Any] = {name: counter_deltas(before[name], scrape(addr))
                              for name, addr in (metrics or {}).items()}
    if meter:
        server["cpu_cores_busy"] = meter.cores_busy()
        server["rss_mb_before"], server["rss_mb_after"] = meter.rss_before, meter.rss_mb()
    if server:
        summary["server"] = server
    summary["locust"] = {"exit_code": proc.returncode, "output_dir": str(out)}
    if proc.returncode not in (0, 1):  # 1: locust saw failures, which the summary counts
        summary["locust"]["stderr_tail"] = proc.stderr[-2000:]
    return summary


def start_stack(config: str | None = None, cloud_replicas: int = 1,
                edge_replicas: int = 1) -> Any:
    """A local stack (redis, cloud, edge, router) on free ports, configured by the TOML
    file `config` like `tandem up --config`, with that many replicas per tier; the
    caller stops it."""
    from tandem.shared.stack import LocalStack, StackSettings

    stack = LocalStack(StackSettings.on_free_ports(config, cloud_replicas, edge_replicas))
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    return stack


def stack_endpoints(stack: Any) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """(target -> address: each service's gRPC one and "openai", the router's HTTP API;
    service -> metrics host:port, service -> pid). Replicas are "cloud", "cloud-2", ..."""
    services = stack.named()
    addresses = {n: s.address for n, s in services.items()}
    addresses["openai"] = f"127.0.0.1:{services['router'].http_port}"
    return (addresses,
            {n: f"127.0.0.1:{s.metrics_port}" for n, s in services.items()},
            {n: s.proc.pid for n, s in services.items()})
