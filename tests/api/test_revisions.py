"""A workflow's version is its definition's revision: runs never make an ETag stale."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.helpers import workflow_body

pytestmark = pytest.mark.usefixtures("live_projector")


def _run(client: httpx.Client, headers: dict[str, str], workflow_id: str) -> None:
    response = client.post(
        f"/v1/workflows/{workflow_id}/executions",
        json={"input": {"name": "Ada"}, "mode": "sync"},
        headers=headers,
    )
    assert response.status_code == 200 and response.json()["status"] == "succeeded"


def _history(client: httpx.Client, headers: dict[str, str], workflow_id: str) -> list[Any]:
    response = client.get(f"/v1/workflows/{workflow_id}/history", headers=headers)
    assert response.status_code == 200
    return response.json()["items"]  # type: ignore[no-any-return]


def test_the_readme_walk_through_deletes_with_the_revision_it_saw(
    client: httpx.Client, owner: dict[str, str], record_runs: Callable[[], int]
) -> None:
    body = workflow_body(
        "Say hello",
        nodes=[
            {"id": "start", "type": "manual_trigger", "parameters": {}},
            {"id": "greet", "type": "set", "parameters": {"fields": {"greeting": "hello"}}},
        ],
        connections=[{"from": "start", "to": "greet"}],
        tags=["demo"],
    )
    created = client.post(
        "/v1/workflows", json=body, headers={**owner, "Idempotency-Key": "first-workflow"}
    )
    assert created.status_code == 201 and created.headers["etag"] == '"1"'
    workflow_id = created.json()["id"]
    url = f"/v1/workflows/{workflow_id}"
    patched = client.patch(
        url, json={"description": "greets every item"}, headers={**owner, "If-Match": '"1"'}
    )
    assert patched.status_code == 200 and patched.json()["version"] == 2
    _run(client, owner, workflow_id)
    assert record_runs() > 0

    # The run is in the history, at the revision it ran; it moved no version.
    items = _history(client, owner, workflow_id)
    assert [(i["type"], i["revision"]) for i in items] == [
        ("Workflow.Created", 1),
        ("Workflow.Updated", 2),
        ("Workflow.Executed", 2),
    ]
    assert items[2]["execution"]["revision"] == 2 and items[2]["changes"] == []
    read = client.get(url, headers={**owner, "X-Min-Position": str(items[2]["position"])})
    assert read.headers["etag"] == '"2"' and read.json()["version"] == 2
    assert read.json()["runs"] == 1

    deleted = client.delete(url, headers={**owner, "If-Match": '"2"'})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["version"] == 3 and deleted.headers["etag"] == '"3"'


def test_two_editors_of_one_revision_conflict_and_runs_do_not(
    api_url: str, client: httpx.Client, owner: dict[str, str], record_runs: Callable[[], int]
) -> None:
    workflow_id = client.post("/v1/workflows", json=workflow_body(), headers=owner).json()["id"]
    _run(client, owner, workflow_id)
    record_runs()

    def edit(name: str) -> httpx.Response:
        with httpx.Client(base_url=api_url, timeout=30) as c:
            return c.patch(
                f"/v1/workflows/{workflow_id}",
                json={"name": name},
                headers={**owner, "If-Match": '"1"'},
            )

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(edit, ["alice", "bob"]))
    assert sorted(a.status_code for a in answers) == [200, 409]
    [conflict] = [a for a in answers if a.status_code == 409]
    assert conflict.json()["current_version"] == 2 and conflict.headers["etag"] == '"2"'
    assert conflict.headers["content-type"] == "application/problem+json"


def test_time_travel_versions_and_revert_count_revisions_not_runs(
    client: httpx.Client, owner: dict[str, str], record_runs: Callable[[], int]
) -> None:
    workflow_id = client.post("/v1/workflows", json=workflow_body("one"), headers=owner).json()[
        "id"
    ]
    url = f"/v1/workflows/{workflow_id}"
    _run(client, owner, workflow_id)
    record_runs()
    for version, name in [(1, "two"), (2, "three")]:
        _run(client, owner, workflow_id)
        record_runs()
        if_match = {**owner, "If-Match": f'"{version}"'}
        answer = client.patch(url, json={"name": name}, headers=if_match)
        assert answer.status_code == 200 and answer.json()["version"] == version + 1

    for version, name in [(1, "one"), (2, "two"), (3, "three")]:
        then = client.get(url, params={"version": version}, headers=owner)
        assert then.status_code == 200 and then.headers["etag"] == f'"{version}"'
        assert (then.json()["name"], then.json()["version"]) == (name, version)
    assert client.get(url, params={"version": 4}, headers=owner).status_code == 404
    assert client.get(url, params={"version": 2**63 - 1}, headers=owner).status_code == 404
    assert client.get(url, params={"version": 10**20}, headers=owner).status_code == 422

    position = _history(client, owner, workflow_id)[-1]["position"]
    wait = {**owner, "X-Min-Position": str(position)}
    versions = client.get(f"{url}/versions", headers=wait).json()["items"]
    assert [(v["version"], v["name"]) for v in versions] == [(1, "one"), (2, "two"), (3, "three")]
    assert client.get(f"{url}/versions/2", headers=wait).json()["name"] == "two"
    assert client.get(f"{url}/versions/4", headers=wait).status_code == 404

    _run(client, owner, workflow_id)
    record_runs()
    reverted = client.post(
        f"{url}/revert", json={"to_version": 1}, headers={**owner, "If-Match": '"3"'}
    )
    assert reverted.status_code == 200 and reverted.json()["version"] == 4
    assert client.get(url, params={"version": 4}, headers=owner).json()["name"] == "one"
    revisions = [i["revision"] for i in _history(client, owner, workflow_id)]
    assert revisions == [1, 1, 1, 2, 2, 3, 3, 4]
