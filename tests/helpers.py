"""Small builders shared by tests."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import uvicorn

import migrations
from infrastructure.database import PgTarget


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


def record_run(app: Any, workflow_id: Any, *, heeding_edits: bool = True) -> None:
    """Append ``Executed`` to a workflow, as the runs follower does for an ended run.

    For tests that need a run in a workflow's history at an exact moment
    (the follower itself is driven by the ``record_runs`` fixture). As the
    follower's, the save fails with ``IntegrityError`` while an edit holds
    runs off the workflow, unless not ``heeding_edits`` (no writer does that).
    """
    import uuid

    from commands.workflow_runs import edits_not_holding
    from domain.meta import EventMeta

    workflow = app.repository.get(workflow_id)
    meta = EventMeta(org_id=workflow.org_id, actor="worker:test", correlation_id="run")
    workflow.record_execution(uuid.uuid4(), "succeeded", workflow.revision, meta)
    app.save(workflow, side_statements=[edits_not_holding([workflow.id])] if heeding_edits else [])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """A real uvicorn server for ``app`` on a free port, in a thread; yields its base URL.

    Real sockets, so clients can time out and disconnect as they would in production.
    """
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def scratch_database(server: PgTarget, prefix: str, *, migrate: bool = True) -> Iterator[PgTarget]:
    """A database of its own on ``server`` (migrated to head unless told not to), dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        target = server.with_dbname(name)
        if migrate:
            migrations.upgrade(target)
        yield target
    finally:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def webhook(
    node_id: str = "hook", path: str = "orders/new", method: str = "POST"
) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": "webhook_trigger",
        "parameters": {"path": path, "method": method, "auth": {"type": "none"}},
    }


def webhook_body(
    name: str = "hooked", path: str = "orders/new", method: str = "POST"
) -> dict[str, Any]:
    """A workflow started by one webhook, ``hook`` -> ``a``."""
    return workflow_body(
        name,
        nodes=[webhook(path=path, method=method), noop("a")],
        connections=[{"from": "hook", "to": "a"}],
    )
