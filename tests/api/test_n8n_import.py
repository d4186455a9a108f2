"""``POST /v1/import/n8n`` over real HTTP against the real event store."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from commands import WorkflowApplication, WorkflowCommands

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "n8n"


def _fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def _max_position(app: WorkflowApplication) -> int:
    return app.recorder.max_notification_id() or 0


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()  # type: ignore[no-any-return]


def _import(
    client: httpx.Client, headers: dict[str, str], body: bytes, **params: str
) -> httpx.Response:
    return client.post(
        "/v1/import/n8n",
        content=body,
        params=params,
        headers={**headers, "Content-Type": "application/json"},
    )


def test_an_export_becomes_a_stored_workflow_that_runs(
    client: httpx.Client, owner: dict[str, str], org: str, commands: WorkflowCommands
) -> None:
    response = _import(client, owner, _fixture("set_v3_4"))
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["placeholders"] == [] and answer["name"] == "Edit Fields v3.4"
    assert response.headers["location"] == f"/v1/workflows/{answer['id']}"
    assert response.headers["etag"] == '"1"'

    stored = commands.get(uuid.UUID(answer["id"]), org)
    assert [node["type"] for node in stored.nodes] == ["manual_trigger", "set"]
    assert stored.nodes[1]["position"] == [200, 0]

    run = client.post(
        f"/v1/workflows/{answer['id']}/executions",
        json={"input": {"n": 3}, "mode": "sync"},
        headers=owner,
    )
    assert run.status_code == 200, run.text
    assert run.json()["status"] == "succeeded"
    assert run.json()["output"] == {
        "edit-fields": [{"n": 3, "tags": ["a", "b"], "doubled": 6, "big": False}]
    }


def test_unsupported_nodes_are_a_422_listing_every_one_and_nothing_is_created(
    client: httpx.Client, owner: dict[str, str], workflow_app: WorkflowApplication
) -> None:
    before = _max_position(workflow_app)
    problem = _problem(_import(client, owner, _fixture("refused")), 422)
    assert problem["type"].endswith("/n8n-import-unsupported")
    assert [(node["name"], node["type"], node["version"]) for node in problem["nodes"]] == [
        ("JS Code", "n8n-nodes-base.code", 2),
        ("Py Code", "n8n-nodes-base.code", 2),
        ("Function", "n8n-nodes-base.function", 1),
        ("Function Item", "n8n-nodes-base.functionItem", 1),
        ("Sheets", "n8n-nodes-base.googleSheets", 4),
        ("Agent", "@n8n/n8n-nodes-langchain.agent", 1.7),
        ("Future Set", "n8n-nodes-base.set", 9),
        ("Other node data", "n8n-nodes-base.set", 3.4),
        ("Signed call", "n8n-nodes-base.httpRequest", 4.2),
    ]
    assert problem["nodes"][0]["reason"] == "runs JavaScript/Python, which Reporunner does not run"
    assert "'JS Code'" in problem["detail"]
    assert _max_position(workflow_app) == before


def test_a_loop_is_a_422_naming_the_cycle(
    client: httpx.Client, owner: dict[str, str], workflow_app: WorkflowApplication
) -> None:
    before = _max_position(workflow_app)
    problem = _problem(_import(client, owner, _fixture("loop")), 422)
    assert problem["cycle"] == ["Fetch page", "More pages?", "Next page", "Fetch page"]
    assert "'Fetch page' -> 'More pages?' -> 'Next page' -> 'Fetch page'" in problem["detail"]
    assert _max_position(workflow_app) == before


def test_partial_import_answers_with_the_placeholders_and_their_run_stops_there(
    client: httpx.Client, owner: dict[str, str], org: str, commands: WorkflowCommands
) -> None:
    response = _import(client, owner, _fixture("partial"), partial="true")
    assert response.status_code == 201, response.text
    answer = response.json()
    assert [(p["name"], p["id"]) for p in answer["placeholders"]] == [
        ("Transform", "transform"),
        ("Check other node", "check-other-node"),
    ]
    assert answer["placeholders"][1]["dropped_connections"] == ["output 1 -> 'Small'"]
    stored = commands.get(uuid.UUID(answer["id"]), org)
    assert {node["id"]: node["type"] for node in stored.nodes}["transform"] == "stop_and_error"

    run = client.post(f"/v1/workflows/{answer['id']}/executions", json={}, headers=owner)
    assert run.status_code == 200, run.text
    assert run.json()["status"] == "failed"
    assert "Placeholder for n8n node 'Transform'" in run.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "type_"),
    [
        (b"{not json", 400, "malformed-json"),
        (b"NaN", 400, "malformed-json"),
        (b'{"name": "x"}', 422, "not-an-n8n-export"),
        (b"[{}, {}]", 422, "not-an-n8n-export"),
    ],
)
def test_what_is_not_an_export_is_a_clear_4xx(
    client: httpx.Client, owner: dict[str, str], body: bytes, status: int, type_: str
) -> None:
    assert _problem(_import(client, owner, body), status)["type"].endswith(type_)


def test_an_export_over_the_body_limit_is_413(client: httpx.Client, owner: dict[str, str]) -> None:
    padding = json.dumps({"nodes": [], "connections": {}, "pad": "x" * (1024 * 1024)})
    _problem(_import(client, owner, padding.encode()), 413)


def test_an_export_our_definition_rules_refuse_is_a_422_naming_them(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    # A lone NoOp: n8n allows it, a Reporunner workflow needs a trigger.
    body = {
        "name": "no trigger",
        "nodes": [{"name": "X", "type": "n8n-nodes-base.noOp", "typeVersion": 1}],
        "connections": {},
    }
    problem = _problem(_import(client, owner, json.dumps(body).encode()), 422)
    assert problem["type"].endswith("/invalid-workflow")
    assert any("no trigger node" in error["msg"] for error in problem["errors"])


def test_viewers_may_not_import(
    client: httpx.Client, org: str, make_key: Callable[[str, str], str]
) -> None:
    viewer = {"Authorization": f"Bearer {make_key(org, 'viewer')}"}
    assert _problem(_import(client, viewer, _fixture("set_v1")), 403)["status"] == 403
    editor = {"Authorization": f"Bearer {make_key(org, 'editor')}"}
    assert _import(client, editor, _fixture("set_v1")).status_code == 201


def test_a_retried_import_with_its_key_answers_the_same_and_writes_nothing(
    client: httpx.Client, owner: dict[str, str], workflow_app: WorkflowApplication
) -> None:
    keyed = {**owner, "Idempotency-Key": f"n8n-{uuid.uuid4()}"}
    first = _import(client, keyed, _fixture("if_v2"))
    assert first.status_code == 201, first.text
    position = _max_position(workflow_app)
    again = _import(client, keyed, _fixture("if_v2"))
    assert again.json()["id"] == first.json()["id"]
    assert _max_position(workflow_app) == position


def test_an_import_goes_into_the_project_named_and_an_unknown_one_is_refused(
    client: httpx.Client, owner: dict[str, str], workflow_app: WorkflowApplication
) -> None:
    made = client.post("/v1/projects", json={"name": "imports"}, headers=owner)
    assert made.status_code == 201, made.text
    project_id = made.json()["id"]
    created = _import(client, owner, _fixture("set_v1"), project_id=project_id)
    assert created.status_code == 201, created.text
    workflow = workflow_app.repository.get(uuid.UUID(created.json()["id"]))
    assert workflow.project_id == project_id
    before = _max_position(workflow_app)
    unknown = _import(client, owner, _fixture("set_v1"), project_id=str(uuid.uuid4()))
    assert unknown.status_code == 404, unknown.text
    assert _problem(_import(client, owner, _fixture("set_v1"), project_id="p1"), 422)
    assert _max_position(workflow_app) == before


def test_an_imported_webhook_answers_with_the_run_where_n8n_used_respond_to_webhook(
    client: httpx.Client, owner: dict[str, str], org: str
) -> None:
    imported = _import(client, owner, _fixture("webhook_v2_respond"))
    assert imported.status_code == 201, imported.text
    workflow_id = imported.json()["id"]
    activated = client.post(
        f"/v1/workflows/{workflow_id}/activate", headers={**owner, "If-Match": '"1"'}
    )
    assert activated.status_code == 200, activated.text
    called = client.post(f"/hooks/{org}/intake", json={"order": 7})
    assert called.status_code == 200, called.text
    [item] = called.json()["output"]["respond"]
    assert item["received"] is True and item["body"] == {"order": 7}
