"""Credentials over real HTTP: a secret goes in once, authenticates calls, and is nowhere else.

"Nowhere else" is searched in the raw bytes: every row of every table of the
test database (the log's ``state`` column included), the Redis streams the
relay publishes to, every log line the service wrote, and every answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import io
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import redis

from commands import WorkflowApplication
from commands.webhook_secrets import seal_clear_secrets
from domain.webhooks import sign
from infrastructure.crypto import MasterKey
from infrastructure.database import PgTarget
from infrastructure.keyring import Keyring
from infrastructure.logs import configure_logging
from projections.relay import BusConfig, Relay
from reporunner.keys import connection_source
from tests.helpers import trigger, webhook_body, workflow_body

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers 200 with a fixed body; keeps each request's headers and body."""

    seen: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
        payload = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    seen: list[tuple[dict[str, str], bytes]] = []
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), type("Recorder", (_Recorder,), {"seen": seen})
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


@pytest.fixture
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client


@pytest.fixture
def owner(make_key: Any, org: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(org, 'owner')}"}


def _secret(marker: str) -> str:
    """A distinctive secret value: easy to search for in raw bytes."""
    return f"sekrit-{marker}-{uuid.uuid4().hex}"


def _create(client: httpx.Client, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/credentials", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _calling(client: httpx.Client, headers: dict[str, str], url: str, credential: str) -> str:
    nodes = [
        trigger(),
        {
            "id": "call",
            "type": "http_request",
            "parameters": {
                "method": "POST",
                "url": url,
                "body": {"n": 1},
                "credential": credential,
                "headers": {"X-Trace": "t1"},
            },
        },
    ]
    body = workflow_body(nodes=nodes, connections=[{"from": nodes[0]["id"], "to": "call"}])
    response = client.post("/v1/workflows", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]  # type: ignore[no-any-return]


def _run(client: httpx.Client, headers: dict[str, str], workflow_id: str) -> httpx.Response:
    return client.post(f"/v1/workflows/{workflow_id}/executions", json={}, headers=headers)


def _everything_in_the_database(db_target: PgTarget) -> bytes:
    """Every row of every table of ours, as PostgreSQL prints it (bytea as hex and as text)."""
    chunks: list[bytes] = []
    with psycopg.connect(db_target.conninfo()) as conn:
        tables = conn.execute(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) "
            "FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for (table,) in tables:
            for (row,) in conn.execute(f"SELECT t::text FROM {table} t"):
                chunks.append(row.encode())
        # The log's state is bytea: its raw bytes too, not only their hex.
        for (state,) in conn.execute("SELECT state FROM reporunner_events"):
            chunks.append(bytes(state))
    return b"\n".join(chunks)


def _everything_in_redis(
    workflow_app: WorkflowApplication, db_target: PgTarget, key_prefix: str
) -> bytes:
    """Publish the whole log to a prefix of this test's, then read every key under it."""
    prefix = f"{key_prefix}creds-{uuid.uuid4().hex[:8]}"
    relay = Relay(
        workflow_app,
        db_target,
        REDIS_URL,
        BusConfig(prefix=prefix),
        name=f"relay-creds-{uuid.uuid4().hex[:8]}",
    )
    try:
        with relay.connect() as conn:
            relay.ensure_tracking(conn)
            relay.reconcile(conn)
            relay.catch_up(conn)
    finally:
        relay.redis.close()
    chunks: list[bytes] = []
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"{key_prefix}*", count=1000))
        assert any(key.startswith(prefix.encode()) for key in keys), "the relay published nothing"
        for key in keys:
            kind = client.type(key)
            if kind == b"stream":
                for _id, fields in client.xrange(key):
                    chunks.extend(v for pair in fields.items() for v in pair)
            elif kind == b"string":
                chunks.append(client.get(key) or b"")
            elif kind == b"hash":
                chunks.extend(v for pair in client.hgetall(key).items() for v in pair)
            chunks.append(key)
        for key in keys:
            if key.startswith(prefix.encode()):
                client.delete(key)
    return b"\n".join(chunks)


def _variants(secret: str) -> list[bytes]:
    """The forms a leaked secret could take: itself, in JSON, in base64."""
    raw = secret.encode()
    return [raw, json.dumps(secret).encode(), base64.b64encode(raw), raw.hex().encode()]


def test_a_credential_authenticates_calls_and_its_secret_is_nowhere_else(
    client: httpx.Client,
    owner: dict[str, str],
    listener: tuple[str, list[tuple[dict[str, str], bytes]]],
    workflow_app: WorkflowApplication,
    db_target: PgTarget,
    app_settings: Any,
    live_executions_projector: None,
) -> None:
    url, seen = listener
    token, password, value, key = (_secret(m) for m in ("token", "password", "value", "hmac"))
    log_lines = io.StringIO()
    configure_logging("debug", "json", stream=log_lines)
    answers: list[str] = []
    try:
        made = {
            "bearer": _create(
                client, owner, {"name": "b", "type": "bearer", "secret": {"token": token}}
            ),
            "basic": _create(
                client,
                owner,
                {
                    "name": "u",
                    "type": "basic",
                    "secret": {"username": "robot", "password": password},
                },
            ),
            "header": _create(
                client,
                owner,
                {"name": "h", "type": "header", "secret": {"name": "X-Api-Key", "value": value}},
            ),
            "hmac_secret": _create(
                client, owner, {"name": "s", "type": "hmac_secret", "secret": {"secret": key}}
            ),
        }
        answers += [json.dumps(m) for m in made.values()]
        for kind, info in made.items():
            assert info["type"] == kind and set(info) == {
                "id",
                "name",
                "type",
                "fingerprint",
                "key_id",
                "created_by",
                "created_at",
                "updated_by",
                "updated_at",
                "position",
            }
        executions, workflows, position = [], [], 0
        for kind in made:
            workflow_id = _calling(client, owner, f"{url}/{kind}", made[kind]["id"])
            response = _run(client, owner, workflow_id)
            answers.append(response.text)
            assert response.json()["status"] == "succeeded", response.text
            executions.append(response.json()["execution_id"])
            workflows.append(workflow_id)
            position = max(position, int(response.headers["X-Log-Position"]))
        # What the listener was sent, request by request.
        (bearer, _), (basic, _), (header, _), (signed, signed_body) = seen
        assert bearer["authorization"] == f"Bearer {token}"
        assert bearer["x-trace"] == "t1"  # the node's own headers stay
        assert (
            basic["authorization"]
            == "Basic " + base64.b64encode(f"robot:{password}".encode()).decode()
        )
        assert header["x-api-key"] == value
        expected = hmac.new(
            key.encode(),
            signed["x-webhook-timestamp"].encode() + b"." + signed_body,
            hashlib.sha256,
        ).hexdigest()
        assert signed["x-webhook-signature"] == f"sha256={expected}"
        # Every read a client can make of what was written.
        reads = [
            "/v1/credentials",
            *(f"/v1/credentials/{info['id']}" for info in made.values()),
            *(f"/v1/executions/{execution_id}" for execution_id in executions),
            "/v1/audit/events?limit=500",
            *(f"/v1/workflows/{workflow_id}/history" for workflow_id in workflows),
        ]
        for path in reads:
            response = client.get(path, headers={**owner, "X-Min-Position": str(position)})
            assert response.status_code == 200, (path, response.text)
            answers.append(response.text)
        listed = client.get("/v1/credentials", headers=owner).json()["items"]
        assert {item["id"] for item in listed} == {info["id"] for info in made.values()}
    finally:
        configure_logging("warning", "json")
    assert log_lines.getvalue().count("\n") > 10  # the service did log, at debug level
    database = _everything_in_the_database(db_target)
    streams = _everything_in_redis(workflow_app, db_target, app_settings.redis_key_prefix)
    # The searches do see what was written: the credentials' events and metadata.
    for info in made.values():
        assert info["id"].encode() in streams and info["fingerprint"].encode() in database
    for secret in (token, password, value, key):
        for form in _variants(secret):
            assert form not in database, f"{secret} in the database"
            assert form not in streams, f"{secret} in Redis"
            assert form.decode() not in log_lines.getvalue(), f"{secret} in the logs"
            assert all(form.decode() not in answer for answer in answers), f"{secret} answered"
    # The basic credential's Authorization value as sent is not anywhere either.
    sent = basic["authorization"].encode()
    assert sent not in database and sent not in streams


def test_roles_bad_input_and_the_life_of_a_credential(
    client: httpx.Client,
    owner: dict[str, str],
    make_key: Any,
    org: str,
    listener: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    url, seen = listener
    viewer = {"Authorization": f"Bearer {make_key(org, 'viewer')}"}
    editor = {"Authorization": f"Bearer {make_key(org, 'editor')}"}
    secret = _secret("life")
    body = {"name": "crm", "type": "bearer", "secret": {"token": secret}}
    assert client.post("/v1/credentials", json=body, headers=viewer).status_code == 403
    info = _create(client, editor, body)
    # Every role reads the metadata, nobody the secret.
    seen_by_viewer = client.get(f"/v1/credentials/{info['id']}", headers=viewer)
    assert seen_by_viewer.status_code == 200 and secret not in seen_by_viewer.text
    assert seen_by_viewer.json()["fingerprint"] == info["fingerprint"]

    bad = [
        ({"name": "x", "type": "oauth", "secret": {"token": secret}}, "type"),
        ({"name": "x", "type": "bearer", "secret": {}}, "token"),
        ({"name": "x", "type": "bearer", "secret": {"token": secret, "extra": "1"}}, "extra"),
        ({"name": "x", "type": "bearer", "secret": {"token": secret + "\r\nX-Evil: 1"}}, "token"),
        ({"name": "x", "type": "basic", "secret": {"username": "a:b", "password": secret}}, ":"),
        ({"name": "x", "type": "header", "secret": {"name": "bad name", "value": secret}}, "name"),
        ({"name": "", "type": "bearer", "secret": {"token": secret}}, "name"),
        ({"name": "x", "type": "bearer", "secret": {"token": 12345}}, "token"),
        # Refused by the body's shape (pydantic), which must not echo it either.
        ({"name": "x", "type": "bearer", "secret": secret}, "secret"),
        ({"name": "x", "type": "bearer", "secret": {"token": secret}, "token": secret}, "token"),
    ]
    for payload, named in bad:
        response = client.post("/v1/credentials", json=payload, headers=owner)
        assert response.status_code == 422, (payload, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert named in response.text
        assert secret not in response.text  # a refused secret is not echoed either

    # A new secret: a new fingerprint, same id; the run uses the new one.
    newer = _secret("newer")
    patched = client.patch(
        f"/v1/credentials/{info['id']}", json={"secret": {"token": newer}}, headers=owner
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["fingerprint"] != info["fingerprint"] and newer not in patched.text
    assert (
        client.patch(
            f"/v1/credentials/{info['id']}", json={"secret": {"user": "x"}}, headers=owner
        ).status_code
        == 422
    )
    assert client.patch(f"/v1/credentials/{info['id']}", json={}, headers=owner).status_code == 422
    workflow_id = _calling(client, owner, f"{url}/crm", info["id"])
    assert _run(client, owner, workflow_id).json()["status"] == "succeeded"
    assert seen[-1][0]["authorization"] == f"Bearer {newer}"

    # Another organisation cannot see it, change it, or use it.
    other = {"Authorization": f"Bearer {make_key(f'{org}-other', 'owner')}"}
    assert client.get(f"/v1/credentials/{info['id']}", headers=other).status_code == 404
    assert client.delete(f"/v1/credentials/{info['id']}", headers=other).status_code == 404
    foreign = _calling(client, other, f"{url}/foreign", info["id"])
    failed = _run(client, other, foreign).json()
    assert failed["status"] == "failed"
    assert "does not exist in this organisation" in json.dumps(failed["error"])

    # Deleted: gone from the list, and a run naming it fails clearly.
    deleted = client.delete(f"/v1/credentials/{info['id']}", headers=owner)
    assert deleted.status_code == 200, deleted.text
    assert client.get(f"/v1/credentials/{info['id']}", headers=owner).status_code == 404
    assert client.delete(f"/v1/credentials/{info['id']}", headers=owner).status_code == 404
    assert client.get("/v1/credentials", headers=owner).json()["items"] == []
    after = _run(client, owner, workflow_id).json()
    assert after["status"] == "failed" and "was deleted" in json.dumps(after["error"])
    assert newer not in json.dumps(after)


@pytest.mark.parametrize(
    "header", ["Authorization", "proxy-authorization", "X-API-KEY", "Cookie", "x-auth-token"]
)
def test_an_inline_secret_header_is_refused_and_points_to_credentials(
    client: httpx.Client, owner: dict[str, str], header: str
) -> None:
    node = {
        "id": "call",
        "type": "http_request",
        "parameters": {"url": "http://127.0.0.1:9/x", "headers": {header: "sk-live-123"}},
    }
    body = workflow_body(nodes=[trigger(), node], connections=[{"from": "start", "to": "call"}])
    response = client.post("/v1/workflows", json=body, headers=owner)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert any(
        error["loc"] == f"nodes[1].parameters.headers.{header}"
        and "/v1/credentials" in error["msg"]
        for error in problem["errors"]
    ), problem
    # A harmless header is fine.
    node["parameters"]["headers"] = {"X-Trace": "1"}
    assert client.post("/v1/workflows", json=body, headers=owner).status_code == 201


def test_a_credential_id_must_look_like_one(client: httpx.Client, owner: dict[str, str]) -> None:
    node = {
        "id": "call",
        "type": "http_request",
        "parameters": {"url": "http://127.0.0.1:9/x", "credential": "my-token"},
    }
    body = workflow_body(nodes=[trigger(), node], connections=[{"from": "start", "to": "call"}])
    response = client.post("/v1/workflows", json=body, headers=owner)
    assert response.status_code == 422
    assert "credential" in response.text


def _signed_delivery(
    client: httpx.Client, org: str, path: str, secret: str, n: int
) -> httpx.Response:
    body = json.dumps({"n": n}).encode()
    now = int(time.time())
    return client.post(
        f"/hooks/{org}/{path}",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Webhook-Signature": sign(secret.encode(), now, body),
            "X-Webhook-Timestamp": str(now),
        },
    )


def test_a_hook_hmac_secret_is_kept_sealed_and_older_clear_ones_are_sealed_at_start(
    client: httpx.Client,
    owner: dict[str, str],
    org: str,
    db_target: PgTarget,
    app_settings: Any,
) -> None:
    body = webhook_body(path="sealed/in", method="POST")
    body["nodes"][0]["parameters"] |= {"auth": {"type": "hmac_sha256"}}
    workflow_id = client.post("/v1/workflows", json=body, headers=owner).json()["id"]
    activated = client.post(
        f"/v1/workflows/{workflow_id}/activate", headers={**owner, "If-Match": '"1"'}
    )
    assert activated.status_code == 200, activated.text
    secret = activated.json()["webhook_secrets"]["hook"]

    def stored() -> tuple[Any, Any]:
        with psycopg.connect(db_target.conninfo()) as conn:
            row = conn.execute(
                "SELECT hmac_secret, hmac_sealed::text FROM webhook_secrets WHERE workflow_id = %s",
                (workflow_id,),
            ).fetchone()
        assert row is not None
        return row[0], row[1]

    clear, sealed = stored()
    assert clear is None and sealed is not None and secret not in sealed
    assert _signed_delivery(client, org, "sealed/in", secret, 1).status_code == 202

    # A row as migration 0010 kept it (in clear) still checks signatures ...
    with psycopg.connect(db_target.conninfo()) as conn:
        conn.execute(
            "UPDATE webhook_secrets SET hmac_secret = %s, hmac_sealed = NULL "
            "WHERE workflow_id = %s",
            (secret, workflow_id),
        )
    assert _signed_delivery(client, org, "sealed/in", secret, 2).status_code == 202
    # ... until a process starts: it seals every such row.
    keyring = Keyring(
        MasterKey.parse(app_settings.master_key.get_secret_value()), connection_source(db_target)
    )
    assert seal_clear_secrets(keyring, connection_source(db_target)) >= 1
    clear, sealed = stored()
    assert clear is None and sealed is not None and secret not in sealed
    assert _signed_delivery(client, org, "sealed/in", secret, 3).status_code == 202
    assert _signed_delivery(client, org, "sealed/in", "wrong", 4).status_code == 401
