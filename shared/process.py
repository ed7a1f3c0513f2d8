"""Starting Tandem services (and redis-server) as child processes and waiting until
they serve: used by `tandem up` and by the test fixtures."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


# A stopped service drains for up to its drain_seconds (30 s by default), then gets this
# much longer before it is killed.
STOP_TIMEOUT_S = 40.0


# Children get SIGTERM when the process that started them dies, so a killed test run or
# `tandem up` leaves no orphaned services holding models and ports. util-linux's setpriv
# sets that (PR_SET_PDEATHSIG) and execs the command: Python code between fork and exec
# (a preexec_fn) segfaulted children forked while gRPC's threads were running. Without
# setpriv (not Linux), children must be stopped explicitly. The signal follows the
# *thread* that started the child, hence ``spawn``.
_SETPRIV = shutil.which("setpriv")


def _dying_with_parent(command: list[str]) -> list[str]:
    return [_SETPRIV, "--pdeathsig", "TERM", "--", *command] if _SETPRIV else command


# Children are started on this one thread, which lives as long as the process: a service
# restarted from a short-lived thread (asyncio.to_thread, a scenario's worker) got SIGTERM
# as soon as that thread exited.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")


def spawn(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(command)`` in its own process group (a Ctrl-C in the terminal
    reaches only the parent, which stops the children in dependency order), dying with
    this process."""
    return _SPAWNER.submit(subprocess.Popen, _dying_with_parent(command), process_group=0,
                           **kwargs).result()


class ServiceFailed(RuntimeError):
    """A child service exited or did not become ready in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_status(address: str, timeout: float = 2.0) -> int:
    """The grpc.health.v1 status of ``address`` (raises grpc.RpcError when unreachable)."""
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    return int(reply.status)


class ServiceProcess:
    """`tandem serve NAME` in a child process, with its readiness file and log file."""

    def __init__(self, name: str, args: list[str], workdir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.ready_file = workdir / f"{name}.ready.json"
        self.log_path = workdir / f"{name}.log"
        self.ready_file.unlink(missing_ok=True)
        self._log: IO[bytes] = open(self.log_path, "wb")
        self._command = [sys.executable, "-m", "tandem.shared.cli.main", "serve", name,
                         "--ready-file", str(self.ready_file), *args]
        self._env = {**os.environ, **(env or {})}
        self.proc = self._spawn()
        self.address = ""
        self.metrics_port: int | None = None
        self.http_port: int | None = None  # the router's HTTP API (None: not served)
        self.http_url = ""

    def _spawn(self) -> subprocess.Popen[bytes]:
        return spawn(self._command, stdout=self._log, stderr=subprocess.STDOUT, env=self._env)

    def restart(self) -> None:
        """Start the service again with the same arguments (after it died)."""
        self.ready_file.unlink(missing_ok=True)
        self.proc = self._spawn()

    def wait_ready(self, timeout: float) -> None:
        """Block until the service is SERVING; raise ServiceFailed (with its log) if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceFailed(f"{self.name} exited with code {self.proc.returncode}:\n"
                                    f"{self.log_tail()}")
            if self.ready_file.exists():
                info = json.loads(self.ready_file.read_text())
                self.address, self.metrics_port = info["address"], info["metrics_port"]
                self.http_port, self.http_url = info.get("http_port"), info.get("http_url", "")
                if info.get("tls"):
                    return  # written once SERVING; a plaintext probe cannot check TLS ports
                try:
                    if health_status(self.address) == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass  # listening but not answering yet: poll again
            time.sleep(0.1)
        raise ServiceFailed(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (the service drains), then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class RedisProcess:
    """A redis-server on loopback. With ``durable``, every write goes to an append-only file
    in ``workdir`` (fsynced every second), so a restarted server keeps the sessions written
    up to about a second before it died; without, nothing is persisted (test fixtures)."""

    def __init__(self, port: int, workdir: Path, durable: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH (Debian package redis-server)")
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.log_path = workdir / "redis.log"
        persistence = (["--appendonly", "yes", "--appendfsync", "everysec"] if durable
                       else ["--appendonly", "no"])
        self._command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                         *persistence, "--dir", str(workdir), "--logfile", str(self.log_path)]
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return spawn(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def restart(self) -> None:
        """Start the server again (it reloads its append-only file when durable)."""
        self.proc = self._spawn()

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceFailed(f"redis-server exited with code {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass  # not listening yet
            time.sleep(0.05)
        raise ServiceFailed(f"redis-server not ready after {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
