"""Activation over real HTTP: If-Match, events, the view, history, route conflicts."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.helpers import webhook_body, workflow_body

pytestmark = pytest.mark.usefixtures("live_projector")


def _create(client: httpx.Client, headers: dict[str, str], body: dict[str, Any]) -> str:
    response = client.post("/v1/workflows", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _switch(
    client: httpx.Client, headers: dict[str, str], workflow_id: str, on: bool, version: int = 1
) -> httpx.Response:
    action = "activate" if on else "deactivate"
    return client.post(
        f"/v1/workflows/{workflow_id}/{action}", headers={**headers, "If-Match": f'"{version}"'}
    )


def _document(
    client: httpx.Client, headers: dict[str, str], workflow_id: str, position: int
) -> dict[str, Any]:
    response = client.get(
        f"/v1/workflows/{workflow_id}", headers={**headers, "X-Min-Position": str(position)}
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    for word in words:
        assert word in problem["detail"], (word, problem["detail"])
    return problem


def test_activate_and_deactivate_are_events_that_leave_the_version(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    workflow_id = _create(client, owner, webhook_body(path="orders/switch"))
    activated = _switch(client, owner, workflow_id, on=True)
    assert activated.status_code == 200, activated.text
    assert activated.json()["version"] == 1 and activated.headers["etag"] == '"1"'
    document = _document(client, owner, workflow_id, activated.json()["position"])
    assert document["active"] is True and document["version"] == 1

    # Idempotent: already active records nothing and answers the same.
    again = _switch(client, owner, workflow_id, on=True)
    assert again.status_code == 200 and again.json() == activated.json()

    # Activation is no edit: the If-Match the editor holds is still good.
    patched = client.patch(
        f"/v1/workflows/{workflow_id}",
        json={"name": "still on"},
        headers={**owner, "If-Match": '"1"'},
    )
    assert patched.status_code == 200 and patched.json()["version"] == 2

    deactivated = _switch(client, owner, workflow_id, on=False, version=2)
    assert deactivated.status_code == 200 and deactivated.json()["version"] == 2
    document = _document(client, owner, workflow_id, deactivated.json()["position"])
    assert document["active"] is False and document["name"] == "still on"

    history = client.get(f"/v1/workflows/{workflow_id}/history", headers=owner).json()["items"]
    assert [(i["type"], i["revision"]) for i in history] == [
        ("Workflow.Created", 1),
        ("Workflow.Activated", 1),
        ("Workflow.Updated", 2),
        ("Workflow.Deactivated", 2),
    ]
    assert history[1]["changes"] == [{"op": "replace", "path": "/active", "value": True}]
    assert history[3]["changes"] == [{"op": "replace", "path": "/active", "value": False}]


def test_if_match_is_required_and_checked_against_the_revision(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    workflow_id = _create(client, owner, webhook_body(path="orders/if-match"))
    url = f"/v1/workflows/{workflow_id}/activate"
    _problem(client.post(url, headers=owner), 428, "If-Match")
    _problem(client.post(url, headers={**owner, "If-Match": "W/x"}), 400, "If-Match")
    stale = _problem(_switch(client, owner, workflow_id, on=True, version=2), 409, "version 1")
    assert stale["current_version"] == 1
    # A refused activation recorded nothing.
    history = client.get(f"/v1/workflows/{workflow_id}/history", headers=owner).json()["items"]
    assert [i["type"] for i in history] == ["Workflow.Created"]


def test_deleted_unknown_and_unactivatable_workflows(
    client: httpx.Client, owner: dict[str, str], org: str, make_key: Callable[[str, str], str]
) -> None:
    workflow_id = _create(client, owner, webhook_body(path="orders/deleted"))
    assert _switch(client, owner, workflow_id, on=True).status_code == 200
    deleted = client.delete(f"/v1/workflows/{workflow_id}", headers={**owner, "If-Match": '"1"'})
    assert deleted.status_code == 200
    _problem(_switch(client, owner, workflow_id, on=True, version=2), 410, "deleted")
    document = _document(client, owner, workflow_id, deleted.json()["position"])
    assert document["active"] is False and document["deleted"] is True

    stranger = {"Authorization": f"Bearer {make_key('another-org-activation', 'owner')}"}
    other = _create(client, owner, webhook_body(path="orders/stranger"))
    _problem(_switch(client, stranger, other, on=True), 404, "not found")

    manual = _create(client, owner, workflow_body())
    problem = _problem(_switch(client, owner, manual, on=True), 422)
    assert "webhook_trigger" in str(problem)

    auditor = {"Authorization": f"Bearer {make_key(org, 'auditor')}"}
    assert _switch(client, auditor, other, on=True).status_code == 403


def test_a_route_held_by_another_active_workflow_is_a_409_naming_it(
    client: httpx.Client, owner: dict[str, str], make_key: Callable[[str, str], str]
) -> None:
    first = _create(client, owner, webhook_body("first", path="shared/path"))
    second = _create(client, owner, webhook_body("second", path="shared/path"))
    other_method = _create(client, owner, webhook_body("put", path="shared/path", method="PUT"))
    assert _switch(client, owner, first, on=True).status_code == 200

    problem = _problem(_switch(client, owner, second, on=True), 409, first, "POST shared/path")
    assert problem["conflicting_workflow_id"] == first
    assert _switch(client, owner, other_method, on=True).status_code == 200
    # Another organisation's hooks are its own: the same path is free there.
    stranger = {"Authorization": f"Bearer {make_key('another-org-routes', 'owner')}"}
    theirs = _create(client, stranger, webhook_body(path="shared/path"))
    assert _switch(client, stranger, theirs, on=True).status_code == 200

    # Deactivating the holder frees the route.
    assert _switch(client, owner, first, on=False).status_code == 200
    assert _switch(client, owner, second, on=True).status_code == 200
    _problem(_switch(client, owner, first, on=True), 409, second)


def test_an_edit_of_an_active_workflow_moves_its_route(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    moving = _create(client, owner, webhook_body("moving", path="edit/old"))
    other = _create(client, owner, webhook_body("other", path="edit/taken"))
    assert _switch(client, owner, moving, on=True).status_code == 200
    assert _switch(client, owner, other, on=True).status_code == 200
    url = f"/v1/workflows/{moving}"

    # Onto a route another active workflow holds: refused, nothing recorded.
    taken = webhook_body(path="edit/taken")["nodes"]
    _problem(
        client.patch(url, json={"nodes": taken}, headers={**owner, "If-Match": '"1"'}), 409, other
    )
    # Onto a free one: the old route is free afterwards.
    free = webhook_body(path="edit/new")["nodes"]
    moved = client.patch(url, json={"nodes": free}, headers={**owner, "If-Match": '"1"'})
    assert moved.status_code == 200, moved.text
    follower = _create(client, owner, webhook_body("follower", path="edit/old"))
    assert _switch(client, owner, follower, on=True).status_code == 200
    blocked = _create(client, owner, webhook_body("blocked", path="edit/new"))
    _problem(_switch(client, owner, blocked, on=True), 409, moving)
    # Deleting an active workflow frees its route too.
    assert client.delete(url, headers={**owner, "If-Match": '"2"'}).status_code == 200
    assert _switch(client, owner, blocked, on=True).status_code == 200


def test_racing_activations_of_one_route_let_exactly_one_win(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    ids = [_create(client, owner, webhook_body(f"racer {n}", path="race/one")) for n in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda i: _switch(client, owner, i, on=True), ids))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [409] * 11, [a.text for a in answers]
    [winner] = [i for i, a in zip(ids, answers, strict=True) if a.status_code == 200]
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["conflicting_workflow_id"] == winner
