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


def record_run(app: Any, workflow_id: Any) -> None:
    """Append ``Executed`` to a workflow, as the runs follower does for an ended run.

    For tests that need a run in a workflow's history at an exact moment
    (the follower itself is driven by the ``record_runs`` fixture).
    """
    import uuid

    from domain.meta import EventMeta

    workflow = app.repository.get(workflow_id)
    meta = EventMeta(org_id=workflow.org_id, actor="worker:test", correlation_id="run")
    workflow.record_execution(uuid.uuid4(), "succeeded", workflow.revision, meta)
    app.save(workflow)
