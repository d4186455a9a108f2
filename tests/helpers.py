"""Small builders shared by tests."""

from __future__ import annotations

import socket
from typing import Any


def trigger(node_id: str = "start") -> dict[str, Any]:
    return {"id": node_id, "type": "manual_trigger", "parameters": {}}


def noop(node_id: str) -> dict[str, Any]:
    return {"id": node_id, "type": "noop", "parameters": {}}


def workflow_body(name: str = "wf", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "description": "",
        "nodes": [trigger(), noop("a")],
        "connections": [{"from": "start", "to": "a"}],
        "tags": [],
        "settings": {},
    }
    body.update(overrides)
    return body


def free_port() -> int:
    """A TCP port nothing listens on right now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
