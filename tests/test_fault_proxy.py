"""The reliability battery's fault proxy, in its own process, against a local echo server:
it forwards, delays, stalls and resumes, resets with RST, retargets, and goes away."""

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tandem.loadtests.chaos.proxy import FaultProxy


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionResetError:
            pass  # the proxy's reset reached this side too


@pytest.fixture
def echo() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=5)


def round_trip(sock: socket.socket, data: bytes = b"ping") -> tuple[bytes, float]:
    started = time.monotonic()
    sock.sendall(data)
    return sock.recv(65536), time.monotonic() - started


def test_it_forwards_delays_stalls_and_resumes(echo: str) -> None:
    proxy = FaultProxy(echo).start()
    try:
        with connect(proxy) as sock:
            assert round_trip(sock)[0] == b"ping"
            proxy.set_latency(0.2)
            reply, took = round_trip(sock)
            assert reply == b"ping" and took >= 0.4  # 0.2 s each way
            proxy.set_latency(0.0)
            proxy.stall()
            sock.sendall(b"held")
            sock.settimeout(0.5)
            with pytest.raises(socket.timeout):
                sock.recv(65536)
            proxy.resume()
            sock.settimeout(5)
            assert sock.recv(65536) == b"held"
        assert proxy.connections == 1
    finally:
        proxy.close()


def test_a_reset_aborts_open_connections_and_retarget_moves_new_ones(echo: str) -> None:
    proxy = FaultProxy("127.0.0.1:1").start()  # nothing listens there: refused
    try:
        with connect(proxy) as sock:
            assert sock.recv(65536) == b""  # closed at once
        proxy.retarget(echo)
        with connect(proxy) as sock:
            assert round_trip(sock)[0] == b"ping"
            assert proxy.reset() == 2  # both sides of the one connection
            with pytest.raises(ConnectionError):  # RST: reset (or a broken pipe)
                round_trip(sock)
    finally:
        proxy.close()
    process = proxy._process
    assert process is not None and process.poll() is not None  # closed: the process is gone
