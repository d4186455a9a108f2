"""Our own export format over HTTP: GET /v1/workflows/{id}/export and POST /v1/import."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.helpers import trigger

BODY: dict[str, Any] = {
    "name": "Everything kept",
    "description": "nodes, names, positions, retries, outputs, tags, settings",
    "nodes": [
        {**trigger(), "name": "Start here", "position": [0, 0]},
        {
            "id": "check",
            "type": "if",
            "name": "Big?",
            "position": [220.5, -40],
            "parameters": {"conditions": [{"field": "n", "op": "gt", "value": 10}]},
        },
        {
            "id": "call",
            "type": "http_request",
            "position": [440, -80],
            "retry": {"max_tries": 3, "wait_ms": 100},
            "on_error": "continue_error_output",
            "parameters": {"url": "http://127.0.0.1:9/x", "headers": {"X-A": "1"}, "body": None},
        },
        {"id": "small", "type": "set", "parameters": {"fields": {"size": "small"}}},
        {"id": "failed", "type": "noop", "parameters": {}},
    ],
    "connections": [
        {"from": "start", "to": "check"},
        {"from": "check", "to": "call", "output": "true"},
        {"from": "check", "to": "small", "output": "false"},
        {"from": "call", "to": "failed", "output": "error"},
    ],
    "tags": ["export", "demo"],
    "settings": {"timeout_ms": 20000, "retry": {"max_attempts": 2, "backoff_ms": 1000}},
}


def _export(client: httpx.Client, headers: dict[str, str], workflow_id: str, **params: Any) -> Any:
    response = client.get(f"/v1/workflows/{workflow_id}/export", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def _import(client: httpx.Client, headers: dict[str, str], document: Any) -> httpx.Response:
    return client.post("/v1/import", json=document, headers=headers)


def test_export_import_export_is_the_same_document_but_for_exported(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    created = client.post("/v1/workflows", json=BODY, headers=owner)
    assert created.status_code == 201, created.text
    exported = _export(client, owner, created.json()["id"])
    assert exported["format"] == "reporunner.workflow"
    assert exported["format_version"] == 1
    assert exported["workflow"] == BODY
    assert exported["exported"]["workflow_id"] == created.json()["id"]
    assert exported["exported"]["version"] == 1

    imported = _import(client, owner, exported)
    assert imported.status_code == 201, imported.text
    assert imported.headers["Location"] == f"/v1/workflows/{imported.json()['id']}"
    again = _export(client, owner, imported.json()["id"])
    assert {k: v for k, v in again.items() if k != "exported"} == {
        k: v for k, v in exported.items() if k != "exported"
    }
    history = client.get(f"/v1/workflows/{imported.json()['id']}/history", headers=owner).json()
    assert history["items"][0]["origin"] == {
        "kind": "import",
        "format": "reporunner.workflow",
        "format_version": 1,
    }


def test_an_earlier_version_exports_as_it_was(client: httpx.Client, owner: dict[str, str]) -> None:
    created = client.post("/v1/workflows", json=BODY, headers=owner).json()
    changed = client.patch(
        f"/v1/workflows/{created['id']}",
        json={"tags": ["changed"]},
        headers={**owner, "If-Match": '"1"'},
    )
    assert changed.status_code == 200
    assert _export(client, owner, created["id"])["workflow"]["tags"] == ["changed"]
    first = _export(client, owner, created["id"], version=1)
    assert first["workflow"] == BODY and first["exported"]["version"] == 1
    missing = client.get(f"/v1/workflows/{created['id']}/export?version=3", headers=owner)
    assert missing.status_code == 404


def test_imports_refuse_other_formats_and_invalid_definitions(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    created = client.post("/v1/workflows", json=BODY, headers=owner).json()
    document = _export(client, owner, created["id"])

    future = _import(client, owner, {**document, "format_version": 2})
    assert future.status_code == 422, future.text
    assert [e["loc"] for e in future.json()["errors"]] == ["body.format_version"]

    n8n = _import(client, owner, {"nodes": [], "connections": {}})
    assert n8n.status_code == 422

    broken = {
        **document,
        "workflow": {**document["workflow"], "connections": [{"from": "x", "to": "start"}]},
    }
    invalid = _import(client, owner, broken)
    assert invalid.status_code == 422, invalid.text
    assert any(e["loc"].startswith("connections[0]") for e in invalid.json()["errors"])


def test_export_is_confined_to_the_organisation(
    client: httpx.Client, owner: dict[str, str], make_key: Any
) -> None:
    created = client.post("/v1/workflows", json=BODY, headers=owner).json()
    stranger = {"Authorization": f"Bearer {make_key(f'org-{uuid.uuid4().hex[:12]}', 'viewer')}"}
    assert client.get(f"/v1/workflows/{created['id']}/export", headers=stranger).status_code == 404
    deleted = client.delete(f"/v1/workflows/{created['id']}", headers={**owner, "If-Match": '"1"'})
    assert deleted.status_code == 200
    assert client.get(f"/v1/workflows/{created['id']}/export", headers=owner).status_code == 410
    # Its versions before the delete still export.
    assert _export(client, owner, created["id"], version=1)["workflow"] == BODY


def test_a_keyed_import_is_made_once(client: httpx.Client, owner: dict[str, str]) -> None:
    created = client.post("/v1/workflows", json=BODY, headers=owner).json()
    document = _export(client, owner, created["id"])
    headers = {**owner, "Idempotency-Key": uuid.uuid4().hex}
    first, second = _import(client, headers, document), _import(client, headers, document)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
