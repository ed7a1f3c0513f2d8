"""A TCP fault proxy between the router and a tier (toxiproxy's faults): it forwards bytes
both ways and, on command, adds latency, stalls (holds every byte, the connections stay
open), resets every connection (RST) or points at another upstream.

It runs in a process of its own, driven over its stdin and stdout one line at a time, so
that forwarding a loaded stack's traffic does not hold the GIL of the process that
generates the load and times it (on its threads, the proxies' loops delayed the load
generator's and added their lag to the latencies it measured). ``FaultProxy`` is the
handle; the control methods may be called from any thread."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import threading

START_TIMEOUT_S = 30.0


class FaultProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self.port = 0
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()  # one command and its reply at a time

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tandem.loadtests.chaos.proxy", self.upstream, self.host],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.port = int(self._command(None))  # its first line: the port it listens on
        return self

    def close(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        try:
            self._command("close")
            self._process.wait(10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait(10)

    # ----- faults ---------------------------------------------------------------------
    def set_latency(self, seconds: float) -> None:
        """Delay every forwarded piece of data by ``seconds`` (each way)."""
        self._command(f"latency {seconds}")

    def stall(self) -> None:
        """Hold every byte from now on; connections stay open (a hung peer)."""
        self._command("stall")

    def resume(self) -> None:
        self._command("resume")

    def reset(self) -> int:
        """Abort every open connection with a TCP reset; returns how many."""
        return int(self._command("reset"))

    def retarget(self, upstream: str) -> None:
        """New connections go to ``upstream`` (open ones keep theirs)."""
        self._command(f"retarget {upstream}")
        self.upstream = upstream

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return int(self._command("connections"))

    def _command(self, line: str | None) -> str:
        process = self._process
        assert process is not None and process.stdin and process.stdout, "start the proxy first"
        with self._lock:
            if line is not None:
                process.stdin.write(line + "\n")
                process.stdin.flush()
            reply = process.stdout.readline()
        if not reply:
            raise RuntimeError(f"the fault proxy to {self.upstream} exited "
                               f"({process.poll()})")
        return reply.strip()


class _Forwarder:
    """The proxy itself, on the child process's event loop."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.latency_s = 0.0
        self.connections = 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.open: set[asyncio.StreamWriter] = set()
        self.serving: set[asyncio.Task[None]] = set()

    def reset(self) -> int:
        count = len(self.open)
        for writer in list(self.open):
            sock = writer.get_extra_info("socket")
            try:  # linger 0: close sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except (AttributeError, OSError):
                pass  # no socket, or already closed by its peer: nothing left to reset
            writer.transport.abort()
        self.open.clear()
        return count

    def command(self, line: str) -> str:
        verb, _, argument = line.partition(" ")
        if verb == "latency":
            self.latency_s = float(argument)
        elif verb == "stall":
            self.flowing.clear()
        elif verb == "resume":
            self.flowing.set()
        elif verb == "reset":
            return str(self.reset())
        elif verb == "retarget":
            self.upstream = argument
        elif verb == "connections":
            return str(self.connections)
        else:
            return f"unknown command {verb!r}"
        return "ok"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.serving.add(task)
        task.add_done_callback(self.serving.discard)
        host, _, port = self.upstream.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.transport.abort()  # upstream down: the client sees a refused connection
            return
        pair = {writer, up_writer}
        self.open |= pair
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in pair:
                self.open.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # reset by a fault or a peer: the other direction ends too
        finally:
            writer.transport.abort()


async def _main(upstream: str, host: str) -> None:
    forwarder = _Forwarder(upstream)
    server = await asyncio.start_server(forwarder.serve, host, 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while line := (await commands.readline()).decode().strip():
        if line == "close":
            break
        print(forwarder.command(line), flush=True)
    server.close()  # "close", or the parent's end of the pipe closed: it is gone
    forwarder.reset()
    if forwarder.serving:  # their pipes end on the aborted sockets; not cancelled mid-read
        await asyncio.wait(forwarder.serving, timeout=5)
    print("ok", flush=True)


if __name__ == "__main__":
    asyncio.run(_main(*sys.argv[1:3]))
