"""A TCP fault proxy between the router and a tier (toxiproxy's faults, in-process): it
forwards bytes both ways and, on command, adds latency, stalls (holds every byte, the
connections stay open), resets every connection (RST) or points at another upstream.
It runs its own event loop on a thread; the control methods may be called from any
thread."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from concurrent.futures import Future


class FaultProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self.port = 0
        self.latency_s = 0.0
        self.connections = 0  # accepted so far
        self._loop = asyncio.new_event_loop()
        self._flowing: asyncio.Event | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy",
                                        daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start()).result(10)
        return self

    def close(self) -> None:
        self._call(self._close()).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ----- faults ---------------------------------------------------------------------
    def set_latency(self, seconds: float) -> None:
        """Delay every forwarded piece of data by ``seconds`` (each way)."""
        self.latency_s = seconds

    def stall(self) -> None:
        """Hold every byte from now on; connections stay open (a hung peer)."""
        self._loop.call_soon_threadsafe(self._gate().clear)

    def resume(self) -> None:
        self._loop.call_soon_threadsafe(self._gate().set)

    def reset(self) -> int:
        """Abort every open connection with a TCP reset; returns how many."""
        return self._call(self._reset()).result(10)

    def retarget(self, upstream: str) -> None:
        """New connections go to ``upstream`` (open ones keep theirs)."""
        self.upstream = upstream

    # ----- the loop -------------------------------------------------------------------
    def _call(self, coro) -> Future:  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _gate(self) -> asyncio.Event:
        assert self._flowing is not None, "start the proxy first"
        return self._flowing

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset()

    async def _reset(self) -> int:
        count = len(self._open)
        for writer in list(self._open):
            sock = writer.get_extra_info("socket")
            if sock is not None:  # linger 0: close sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._open.clear()
        return count

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        host, _, port = self.upstream.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.transport.abort()  # upstream down: the client sees a refused connection
            return
        pair = {writer, up_writer}
        self._open |= pair
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in pair:
                self._open.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._gate().wait()
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # reset by a fault or a peer: the other direction ends too
        finally:
            writer.transport.abort()
