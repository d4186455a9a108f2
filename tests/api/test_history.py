"""History with JSON Patches, time travel, revert and the organisation's log, over HTTP."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import noop, trigger, workflow_body


def _create(client: httpx.Client, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post("/v1/workflows", json=workflow_body(**body), headers=headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _patch(
    client: httpx.Client, headers: dict[str, str], workflow_id: str, version: int, **changes: Any
) -> dict[str, Any]:
    response = client.patch(
        f"/v1/workflows/{workflow_id}",
        json=changes,
        headers={**headers, "If-Match": f'"{version}"'},
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_history_shows_who_changed_which_node_parameter(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    nodes = [trigger(), {"id": "s", "type": "set", "parameters": {"fields": {"a": 1}}}]
    created = _create(client, owner, nodes=nodes, connections=[{"from": "start", "to": "s"}])
    changed = [trigger(), {"id": "s", "type": "set", "parameters": {"fields": {"a": 2}}}]
    _patch(client, owner, created["id"], 1, nodes=changed)
    deleted = client.delete(f"/v1/workflows/{created['id']}", headers={**owner, "If-Match": '"2"'})
    assert deleted.status_code == 200

    history = client.get(f"/v1/workflows/{created['id']}/history", headers=owner).json()
    items = history["items"]
    assert [(i["version"], i["type"]) for i in items] == [
        (1, "Workflow.Created"),
        (2, "Workflow.Updated"),
        (3, "Workflow.Deleted"),
    ]
    assert items[1]["changes"] == [
        {"op": "replace", "path": "/nodes/1/parameters/fields/a", "value": 2}
    ]
    assert items[2]["changes"] == [{"op": "replace", "path": "/deleted", "value": True}]
    assert all(i["actor"].startswith("apikey:") and i["correlation_id"] for i in items)
    assert [i["position"] for i in items] == sorted(i["position"] for i in items)
    # Applying every patch in order rebuilds the final state from nothing.
    state: Any = {}
    for item in items:
        state = jsonpatch.apply_patch(state, item["changes"])
    assert state["nodes"] == changed and state["deleted"] is True


def test_history_pages_with_a_cursor(client: httpx.Client, owner: dict[str, str]) -> None:
    created = _create(client, owner, name="v1")
    for version in range(1, 6):
        _patch(client, owner, created["id"], version, name=f"v{version + 1}")
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(
            f"/v1/workflows/{created['id']}/history", params=params, headers=owner
        ).json()
        seen += [item["version"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [1, 2, 3, 4, 5, 6]


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    updates=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "name": st.text("abcdefgh ", min_size=1, max_size=12).filter(str.strip),
                "description": st.text("xyz", max_size=8),
                "tags": st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=3),
                "settings": st.sampled_from([{}, {"timeout_ms": 1000}]),
            },
        ).filter(bool),
        min_size=1,
        max_size=6,
    )
)
def test_time_travel_returns_every_version_exactly_as_it_was(
    client: httpx.Client, owner: dict[str, str], updates: list[dict[str, Any]]
) -> None:
    created = _create(client, owner, name="start")
    seen = {1: client.get(f"/v1/workflows/{created['id']}?version=1", headers=owner).json()}
    current = created
    expected = {1: workflow_body(name="start")}
    for changes in updates:
        answer = _patch(client, owner, created["id"], current["version"], **changes)
        if answer["version"] != current["version"]:
            expected[answer["version"]] = {**expected[current["version"]], **changes}
        current = answer
    for version, definition in expected.items():
        then = client.get(f"/v1/workflows/{created['id']}?version={version}", headers=owner)
        assert then.status_code == 200 and then.headers["etag"] == f'"{version}"'
        body = then.json()
        assert {k: body[k] for k in definition} == definition
    assert seen[1]["name"] == "start"


def test_as_of_gives_the_state_at_an_instant(client: httpx.Client, owner: dict[str, str]) -> None:
    before = datetime.now(UTC)
    time.sleep(0.01)
    created = _create(client, owner, name="first")
    time.sleep(0.01)
    between = datetime.now(UTC)
    time.sleep(0.01)
    _patch(client, owner, created["id"], 1, name="second")
    url = f"/v1/workflows/{created['id']}"
    at = client.get(url, params={"as_of": between.isoformat()}, headers=owner)
    assert at.status_code == 200 and at.json()["name"] == "first"
    now = client.get(url, params={"as_of": datetime.now(UTC).isoformat()}, headers=owner)
    assert now.json()["name"] == "second"
    earlier = client.get(url, params={"as_of": before.isoformat()}, headers=owner)
    assert earlier.status_code == 404
    assert client.get(url, params={"as_of": "yesterday"}, headers=owner).status_code == 400
    assert (
        client.get(url, params={"as_of": "2026-11-26T10:00:00"}, headers=owner).status_code == 400
    )
    assert client.get(url, params={"version": 9}, headers=owner).status_code == 404
    both = client.get(url, params={"version": 1, "as_of": between.isoformat()}, headers=owner)
    assert both.status_code == 400


def test_revert_restores_a_version_as_a_new_one_and_keeps_history(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    created = _create(client, owner, name="good", tags=["x"])
    _patch(client, owner, created["id"], 1, name="bad", tags=[], nodes=[trigger()], connections=[])
    url = f"/v1/workflows/{created['id']}/revert"
    reverted = client.post(url, json={"to_version": 1}, headers={**owner, "If-Match": '"2"'})
    assert reverted.status_code == 200, reverted.text
    assert reverted.json()["version"] == 3
    now = client.get(f"/v1/workflows/{created['id']}?version=3", headers=owner).json()
    assert (now["name"], now["tags"], now["nodes"]) == ("good", ["x"], [trigger(), noop("a")])
    history = client.get(f"/v1/workflows/{created['id']}/history", headers=owner).json()
    assert [i["type"] for i in history["items"]] == [
        "Workflow.Created",
        "Workflow.Updated",
        "Workflow.Updated",
    ]
    stale = client.post(url, json={"to_version": 1}, headers={**owner, "If-Match": '"2"'})
    assert stale.status_code == 409
    missing = client.post(url, json={"to_version": 7}, headers={**owner, "If-Match": '"3"'})
    assert missing.status_code == 422 and "to_version" in missing.text
    assert client.post(url, json={"to_version": 1}, headers=owner).status_code == 428
    assert (
        client.post(url, json={"to_version": 0}, headers={**owner, "If-Match": '"3"'}).status_code
        == 422
    )


def test_the_org_log_is_for_owners_and_auditors_and_only_their_own(
    client: httpx.Client, owner: dict[str, str], org: str, make_key: Any
) -> None:
    created = _create(client, owner, name="logged")
    _patch(client, owner, created["id"], 1, name="logged again")
    other = f"other-{uuid.uuid4().hex[:8]}"
    _create(client, {"Authorization": f"Bearer {make_key(other, 'owner')}"}, name="theirs")
    auditor = {"Authorization": f"Bearer {make_key(org, 'auditor')}"}
    log = client.get("/v1/audit/events", headers=auditor).json()["items"]
    assert [(e["aggregate_id"], e["type"]) for e in log] == [
        (created["id"], "Workflow.Created"),
        (created["id"], "Workflow.Updated"),
    ]
    only_updates = client.get(
        "/v1/audit/events", params={"type": "Workflow.Updated"}, headers=owner
    ).json()["items"]
    assert [e["version"] for e in only_updates] == [2]
    after_first = client.get(
        "/v1/audit/events", params={"after_position": log[0]["position"]}, headers=owner
    ).json()["items"]
    assert [e["version"] for e in after_first] == [2]
    for role in ("viewer", "editor"):
        headers = {"Authorization": f"Bearer {make_key(org, role)}"}
        assert client.get("/v1/audit/events", headers=headers).status_code == 403
    # An auditor reads but cannot change anything.
    assert (
        client.patch(
            f"/v1/workflows/{created['id']}",
            json={"name": "nope"},
            headers={**auditor, "If-Match": '"2"'},
        ).status_code
        == 403
    )
    assert (
        client.get("/v1/audit/events", params={"since": "soon"}, headers=owner).status_code == 400
    )
