"""The HTTP port against a real loopback server: one deadline for the whole exchange."""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from domain.engine import HttpFailure, HttpRequest
from infrastructure.http_port import AllowListedHttp

_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 40\r\n\r\n"


class _Trickler(socketserver.BaseRequestHandler):
    """Sends a whole answer one byte every 0.2 s (every 10 ms for ``/fast``),
    the headers too or only the body."""

    trickle_headers: bool

    def handle(self) -> None:
        pause = 0.01 if self.request.recv(65536).startswith(b"GET /fast ") else 0.2
        head, body = (b"", _HEAD + b"x" * 40) if self.trickle_headers else (_HEAD, b"x" * 40)
        try:
            self.request.sendall(head)
            for byte in body:
                self.request.sendall(bytes([byte]))
                time.sleep(pause)
        except OSError:  # the client cut the exchange
            pass


@pytest.fixture(params=[True, False], ids=["headers trickled", "body trickled"])
def trickler(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Trickler", (_Trickler,), {"trickle_headers": request.param})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_trickling_server_is_cut_at_the_exchanges_deadline(trickler: str) -> None:
    port = AllowListedHttp(frozenset({"127.0.0.1"}), max_response_bytes=1 << 20)
    try:
        began = time.monotonic()
        with pytest.raises(HttpFailure, match="took longer than 1000 ms"):
            port(HttpRequest("GET", trickler, {}, None, timeout_ms=1000))
        assert time.monotonic() - began < 1.2
    finally:
        port.close()


def test_an_answer_within_the_deadline_is_read_whole(trickler: str) -> None:
    port = AllowListedHttp(frozenset({"127.0.0.1"}), max_response_bytes=1 << 20)
    try:
        response = port(HttpRequest("GET", trickler + "fast", {}, None, timeout_ms=30_000))
    finally:
        port.close()
    assert response.status == 200 and response.body == "x" * 40
