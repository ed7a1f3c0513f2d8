"""Serving the HTTP app inside the router process: uvicorn on the router's event loop,
started and stopped with its gRPC server (a `SideServer` of `grpc_server.serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the gRPC server's SIGTERM handling stops
    both fronts (uvicorn's would replace it and swallow the signal)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpFront:
    """The HTTP API on ``host:port`` (0: a free port), HTTPS when given a certificate."""

    def __init__(self, app: FastAPI, host: str, port: int, tls_cert: str | None = None,
                 tls_key: str | None = None) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.tls = (tls_cert, tls_key) if tls_cert and tls_key else None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, object]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets
        # that say TCP, and without it each answer waits 40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))  # bound here: the port is known before serving
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", server_header=False,
            ssl_certfile=self.tls[0] if self.tls else None,
            ssl_keyfile=self.tls[1] if self.tls else None)
        self._server = _EmbeddedServer(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        scheme = "https" if self.tls else "http"
        return {"http_port": port, "http_url": f"{scheme}://{self.host}:{port}"}

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let open requests finish for ``grace_s``, then close them."""
        if self._server is None or self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = max(int(grace_s), 1)
        self._server.should_exit = True
        await self._task
