"""Templates over HTTP: publish, list and search, instantiate, unpublish, visibility."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.helpers import trigger

GREETER_NODES = [
    trigger(),
    {
        "id": "greet",
        "type": "set",
        "name": "Greet {{ params.who }}",
        "position": [200, 40],
        "parameters": {
            "fields": {
                "greeting": "Hello {{ params.who }}",
                "limit": "{{ params.limit }}",
                "ratio": "{{ params.ratio }}",
                "loud": "{{ params.loud }}",
                "extra": "{{ params.extra }}",
                "list": "{{ params.list }}",
            }
        },
    },
    {
        "id": "fail",
        "type": "stop_and_error",
        "parameters": {"message": "{{ params.message }}"},
    },
]
GREETER_PARAMETERS = [
    {"name": "who", "type": "string", "default": "world", "description": "Whom to greet"},
    {"name": "limit", "type": "integer", "required": True},
    {"name": "ratio", "type": "number", "default": 0.5},
    {"name": "loud", "type": "boolean", "default": False},
    {"name": "extra", "type": "object", "default": {"k": [1, 2]}},
    {"name": "list", "type": "array", "default": []},
    {"name": "message", "type": "string", "default": "stopped"},
]


def _workflow(client: httpx.Client, headers: dict[str, str], name: str) -> dict[str, Any]:
    body = {
        "name": name,
        "description": f"{name} for everyone",
        "nodes": GREETER_NODES,
        "connections": [{"from": "start", "to": "greet"}, {"from": "greet", "to": "fail"}],
        "tags": ["greeting"],
        "settings": {"timeout_ms": 5000},
    }
    response = client.post("/v1/workflows", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _publish(
    client: httpx.Client, headers: dict[str, str], workflow_id: str, **body: Any
) -> httpx.Response:
    return client.post(
        "/v1/templates",
        json={"workflow_id": workflow_id, "parameters": GREETER_PARAMETERS, **body},
        headers=headers,
    )


def _published(client: httpx.Client, headers: dict[str, str], name: str, **body: Any) -> str:
    workflow = _workflow(client, headers, name)
    response = _publish(client, headers, workflow["id"], **body)
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v1/templates/{response.json()['id']}"
    return str(response.json()["id"])


def _instantiate(
    client: httpx.Client, headers: dict[str, str], template_id: str, **body: Any
) -> httpx.Response:
    return client.post(f"/v1/templates/{template_id}/instantiate", json=body, headers=headers)


@pytest.fixture
def other_owner(make_key: Callable[[str, str], str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(f'org-{uuid.uuid4().hex[:12]}', 'owner')}"}


def test_instantiate_substitutes_typed_values_and_defaults(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    template_id = _published(client, owner, "Greeter")
    made = _instantiate(
        client,
        owner,
        template_id,
        name="Greets Ada",
        parameters={"who": "Ada", "limit": 3, "loud": True},
    )
    assert made.status_code == 201, made.text
    workflow = client.get(f"/v1/workflows/{made.json()['id']}?version=1", headers=owner).json()
    greet = workflow["nodes"][1]
    assert workflow["name"] == "Greets Ada"
    assert greet["name"] == "Greet Ada"
    assert greet["position"] == [200, 40]
    assert greet["parameters"]["fields"] == {
        "greeting": "Hello Ada",
        "limit": 3,
        "ratio": 0.5,
        "loud": True,
        "extra": {"k": [1, 2]},
        "list": [],
    }
    assert workflow["nodes"][2]["parameters"] == {"message": "stopped"}
    assert workflow["tags"] == ["greeting"] and workflow["settings"] == {"timeout_ms": 5000}
    # Without a name the new workflow takes the template's (the source's, substituted).
    default_named = _instantiate(client, owner, template_id, parameters={"limit": 1})
    assert default_named.status_code == 201, default_named.text
    second = client.get(f"/v1/workflows/{default_named.json()['id']}?version=1", headers=owner)
    assert second.json()["name"] == "Greeter"


def test_history_records_the_template_and_revision(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    workflow = _workflow(client, owner, "Versioned")
    changed = client.patch(
        f"/v1/workflows/{workflow['id']}",
        json={"description": "second"},
        headers={**owner, "If-Match": '"1"'},
    )
    assert changed.status_code == 200
    published = _publish(client, owner, workflow["id"], version=1)
    assert published.status_code == 201, published.text
    template_id = published.json()["id"]
    made = _instantiate(client, owner, template_id, parameters={"limit": 2}).json()
    history = client.get(f"/v1/workflows/{made['id']}/history", headers=owner).json()
    created = history["items"][0]
    assert created["type"] == "Workflow.Created"
    assert created["origin"] == {
        "kind": "template",
        "template_id": template_id,
        "template_version": 1,
        "workflow_id": workflow["id"],
        "revision": 1,
    }
    # Version 1 was published: its description, not the later one.
    template = client.get(f"/v1/templates/{template_id}", headers=owner).json()
    assert template["description"] == "Versioned for everyone"
    assert template["source"] == {"workflow_id": workflow["id"], "revision": 1}
    # A plain create records no origin.
    plain = client.get(f"/v1/workflows/{workflow['id']}/history", headers=owner).json()
    assert "origin" not in plain["items"][0]


def test_bad_values_are_a_422_naming_each_parameter(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    template_id = _published(client, owner, "Strict")
    response = _instantiate(
        client,
        owner,
        template_id,
        parameters={"who": 1, "ratio": "half", "loud": "yes", "list": {}, "nope": 1},
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert sorted(error["loc"] for error in response.json()["errors"]) == [
        "parameters.limit",
        "parameters.list",
        "parameters.loud",
        "parameters.nope",
        "parameters.ratio",
        "parameters.who",
    ]
    # A value of the right type that the definition refuses is named by its parameter too.
    empty_message = _instantiate(client, owner, template_id, parameters={"limit": 1, "message": ""})
    assert empty_message.status_code == 422, empty_message.text
    errors = empty_message.json()["errors"]
    assert [error["loc"] for error in errors] == ["parameters.message"]
    assert "nodes[2].parameters.message" in errors[0]["msg"]


def test_publishing_checks_declarations_against_the_definition(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    workflow = _workflow(client, owner, "Undeclared")
    response = client.post(
        "/v1/templates",
        json={"workflow_id": workflow["id"], "parameters": GREETER_PARAMETERS[:1]},
        headers=owner,
    )
    assert response.status_code == 422, response.text
    locs = {error["loc"] for error in response.json()["errors"]}
    assert "nodes[1].parameters.fields.limit" in locs
    assert "nodes[2].parameters.message" in locs
    # No such workflow.
    missing = client.post("/v1/templates", json={"workflow_id": str(uuid.uuid4())}, headers=owner)
    assert missing.status_code == 404


def test_editors_instantiate_but_do_not_publish(
    client: httpx.Client, owner: dict[str, str], org: str, make_key: Callable[[str, str], str]
) -> None:
    editor = {"Authorization": f"Bearer {make_key(org, 'editor')}"}
    workflow = _workflow(client, owner, "Owned")
    assert _publish(client, editor, workflow["id"]).status_code == 403
    template_id = _published(client, owner, "Owned too")
    assert _instantiate(client, editor, template_id, parameters={"limit": 1}).status_code == 201
    assert client.post(f"/v1/templates/{template_id}/unpublish", headers=editor).status_code == 403


def test_unpublishing_keeps_instances_and_stops_new_ones(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    template_id = _published(client, owner, "Retiring")
    made = _instantiate(client, owner, template_id, parameters={"limit": 1}).json()
    unpublished = client.post(f"/v1/templates/{template_id}/unpublish", headers=owner)
    assert unpublished.status_code == 200, unpublished.text
    assert unpublished.json()["version"] == 2
    again = client.post(f"/v1/templates/{template_id}/unpublish", headers=owner)
    assert again.status_code == 200 and again.json()["position"] == unpublished.json()["position"]

    refused = _instantiate(client, owner, template_id, parameters={"limit": 1})
    assert refused.status_code == 410, refused.text
    assert refused.json()["type"].endswith("template-unpublished")
    assert client.get(f"/v1/templates/{template_id}", headers=owner).status_code == 410
    listed = client.get("/v1/templates", params={"q": "Retiring"}, headers=owner).json()
    assert listed["items"] == []
    # What it made stays, and runs.
    run = client.post(f"/v1/workflows/{made['id']}/executions", json={}, headers=owner)
    assert run.status_code == 200, run.text
    assert run.json()["status"] == "failed"  # its stop_and_error node says "stopped"
    assert client.get(f"/v1/workflows/{made['id']}?version=1", headers=owner).status_code == 200


def test_public_templates_reach_every_organisation_and_private_ones_none(
    client: httpx.Client, owner: dict[str, str], other_owner: dict[str, str]
) -> None:
    word = uuid.uuid4().hex[:10]
    private_id = _published(client, owner, f"Private {word}")
    public_id = _published(client, owner, f"Public {word}", visibility="public")

    ours = client.get("/v1/templates", params={"q": word}, headers=owner).json()
    assert {item["id"] for item in ours["items"]} == {private_id, public_id}
    theirs = client.get("/v1/templates", params={"q": word}, headers=other_owner).json()
    assert [item["id"] for item in theirs["items"]] == [public_id]
    assert theirs["items"][0]["visibility"] == "public"

    assert client.get(f"/v1/templates/{private_id}", headers=other_owner).status_code == 404
    assert _instantiate(client, other_owner, private_id, parameters={"limit": 1}).status_code == 404
    made = _instantiate(client, other_owner, public_id, parameters={"limit": 1})
    assert made.status_code == 201, made.text
    # The new workflow is theirs, not the publisher's.
    assert (
        client.get(f"/v1/workflows/{made.json()['id']}?version=1", headers=owner).status_code == 404
    )
    # Only the publishing organisation unpublishes.
    assert (
        client.post(f"/v1/templates/{public_id}/unpublish", headers=other_owner).status_code == 403
    )
    assert (
        client.post(f"/v1/templates/{private_id}/unpublish", headers=other_owner).status_code == 404
    )


def test_list_searches_and_pages_newest_first(client: httpx.Client, owner: dict[str, str]) -> None:
    word = uuid.uuid4().hex[:10]
    ids = [_published(client, owner, f"Paged {word} {i}") for i in range(5)]
    _published(client, owner, f"Elsewhere {uuid.uuid4().hex[:10]}")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"q": f"paged {word.upper()}", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/templates", params=params, headers=owner)
        assert page.status_code == 200, page.text
        seen += [item["id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    summary = client.get("/v1/templates", params={"q": word, "limit": 1}, headers=owner).json()
    item = summary["items"][0]
    assert "definition" not in item
    assert [p["name"] for p in item["parameters"]] == [p["name"] for p in GREETER_PARAMETERS]
    # LIKE's wildcards are searched for literally.
    assert client.get("/v1/templates", params={"q": f"{word}%"}, headers=owner).json() == {
        "items": [],
        "next_cursor": None,
    }
    bad = client.get("/v1/templates", params={"cursor": "not-a-cursor"}, headers=owner)
    assert bad.status_code == 400
