"""The engine's HTTP port: real requests for ``http_request`` nodes, allow-listed.

The engine refuses a host that is not on the allow-list before it calls this
port; the port checks again, so no code path can reach an unlisted host. The
response body is read up to a size limit (a node's output must stay bounded)
and parsed as JSON when the server says it is JSON.

One deadline for the whole exchange. httpx's timeouts apply to each network
operation, so a server trickling one byte every half second kept a node with
``timeout_ms: 1000`` alive for 19.5 s (the headers can be trickled too, inside
httpx, where no loop of ours could look at the clock). So a timer shuts the
exchange's socket down when ``timeout_ms`` has passed, which ends any read
blocked on it at once. That needs the socket: connections are not kept alive
(each exchange opens its own, and the ``trace`` extension hands it over), at
the cost of one TCP (and TLS) handshake per call.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from domain.engine import HttpFailure, HttpRequest, HttpResponse

# The trace events whose return value is the exchange's (TCP, then TLS) stream.
_STREAM_EVENTS = frozenset({"connection.connect_tcp.complete", "connection.start_tls.complete"})


class AllowListedHttp:
    """Calls only hosts on ``allowed_hosts``; one client, one connection per exchange."""

    def __init__(self, allowed_hosts: frozenset[str], max_response_bytes: int) -> None:
        self.allowed_hosts = frozenset(host.lower() for host in allowed_hosts)
        self.max_response_bytes = max_response_bytes
        # No redirects: a redirect could lead off the allow-list. No keep-alive:
        # the deadline cuts an exchange by shutting its own socket down.
        self._client = httpx.Client(
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def __call__(self, request: HttpRequest) -> HttpResponse:
        host = (urlsplit(request.url).hostname or "").lower()
        if host not in self.allowed_hosts:
            raise HttpFailure(f"host '{host}' is not on the allow-list")
        body = encode_body(request.body)
        headers = dict(request.headers)
        if body is not None:
            headers.setdefault("content-type", "application/json")
        timeout_s = request.timeout_ms / 1000
        deadline = time.monotonic() + timeout_s
        cutter = _DeadlineCutter()
        timer = threading.Timer(timeout_s, cutter.cut)
        timer.daemon = True
        timer.start()
        try:
            with self._client.stream(
                request.method,
                request.url,
                headers=headers,
                content=body,
                timeout=timeout_s,
                extensions={"trace": cutter.trace},
            ) as response:
                raw = bytearray()
                for chunk in response.iter_bytes():
                    raw += chunk
                    if len(raw) > self.max_response_bytes:
                        raise HttpFailure(
                            f"response from '{host}' is over {self.max_response_bytes} bytes"
                        )
                    if time.monotonic() >= deadline:
                        raise _timed_out(request)
        except httpx.HTTPError as exc:
            if cutter.fired or time.monotonic() >= deadline:
                raise _timed_out(request) from None
            raise HttpFailure(f"{type(exc).__name__}: {exc}") from None
        finally:
            timer.cancel()
        return HttpResponse(
            status=response.status_code,
            headers=dict(response.headers),
            body=_decode(bytes(raw), response.headers.get("content-type", "")),
        )

    def close(self) -> None:
        self._client.close()


def encode_body(body: Any) -> bytes | None:
    """The bytes a request's JSON body is sent as (an HMAC credential signs these)."""
    return None if body is None else json.dumps(body).encode()


def _timed_out(request: HttpRequest) -> HttpFailure:
    return HttpFailure(f"the exchange took longer than {request.timeout_ms} ms")


class _DeadlineCutter:
    """Shuts the exchange's socket down once ``cut`` is called (by the timer)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: Any = None
        self.fired = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event in _STREAM_EVENTS:
            with self._lock:
                self._stream = info.get("return_value")
                if self.fired:  # the deadline passed while connecting
                    self._shutdown()

    def cut(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._stream is None:
            return
        sock = self._stream.get_extra_info("socket")
        if sock is None:
            return
        with contextlib.suppress(OSError):  # already closed: nothing left to cut
            sock.shutdown(socket.SHUT_RDWR)


def _decode(raw: bytes, content_type: str) -> object:
    text = raw.decode("utf-8", errors="replace")
    if "json" in content_type.lower():
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text
