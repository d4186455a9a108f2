"""The engine's HTTP port: real requests for ``http_request`` nodes, allow-listed.

The engine refuses a host that is not on the allow-list before it calls this
port; the port checks again, so no code path can reach an unlisted host. The
response body is read up to a size limit (a node's output must stay bounded)
and parsed as JSON when the server says it is JSON.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx

from domain.engine import HttpFailure, HttpRequest, HttpResponse


class AllowListedHttp:
    """Calls only hosts on ``allowed_hosts``; one client, pooled connections."""

    def __init__(self, allowed_hosts: frozenset[str], max_response_bytes: int) -> None:
        self.allowed_hosts = frozenset(host.lower() for host in allowed_hosts)
        self.max_response_bytes = max_response_bytes
        # No redirects: a redirect could lead off the allow-list.
        self._client = httpx.Client(follow_redirects=False, trust_env=False)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        host = (urlsplit(request.url).hostname or "").lower()
        if host not in self.allowed_hosts:
            raise HttpFailure(f"host '{host}' is not on the allow-list")
        body = None if request.body is None else json.dumps(request.body).encode()
        headers = dict(request.headers)
        if body is not None:
            headers.setdefault("content-type", "application/json")
        try:
            with self._client.stream(
                request.method,
                request.url,
                headers=headers,
                content=body,
                timeout=request.timeout_ms / 1000,
            ) as response:
                raw = bytearray()
                for chunk in response.iter_bytes():
                    raw += chunk
                    if len(raw) > self.max_response_bytes:
                        raise HttpFailure(
                            f"response from '{host}' is over {self.max_response_bytes} bytes"
                        )
        except httpx.HTTPError as exc:
            raise HttpFailure(f"{type(exc).__name__}: {exc}") from None
        return HttpResponse(
            status=response.status_code,
            headers=dict(response.headers),
            body=_decode(bytes(raw), response.headers.get("content-type", "")),
        )

    def close(self) -> None:
        self._client.close()


def _decode(raw: bytes, content_type: str) -> object:
    text = raw.decode("utf-8", errors="replace")
    if "json" in content_type.lower():
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text
