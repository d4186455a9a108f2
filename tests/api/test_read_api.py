"""The read API over real HTTP: views kept by a live projector."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.helpers import workflow_body

pytestmark = pytest.mark.usefixtures("live_projector")


def _create(client: httpx.Client, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post("/v1/workflows", json=workflow_body(**body), headers=headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _fresh(position: int) -> dict[str, str]:
    return {"X-Min-Position": str(position)}


def test_read_your_writes(client: httpx.Client, owner: dict[str, str]) -> None:
    created = _create(client, owner, name="mine")
    response = client.get(
        f"/v1/workflows/{created['id']}", headers={**owner, **_fresh(created["position"])}
    )
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["name"] == "mine" and document["version"] == 1
    assert int(response.headers["x-projection-position"]) >= created["position"]
    assert response.headers["etag"] == '"1"'
    assert set(document) >= {
        "id",
        "name",
        "description",
        "nodes",
        "connections",
        "tags",
        "settings",
        "version",
        "deleted",
        "created_at",
        "created_by",
        "updated_at",
        "updated_by",
    }


def test_min_position_in_the_future_is_503_with_the_current_position(
    client: httpx.Client, owner: dict[str, str], app_settings: Any
) -> None:
    app_settings.min_position_wait_s = 0.2
    try:
        response = client.get("/v1/workflows?min_position=999999999", headers=owner)
    finally:
        app_settings.min_position_wait_s = 5.0
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.json()["current_position"] == int(response.headers["x-projection-position"])


def test_list_filters_sorts_and_hides_deleted(client: httpx.Client, owner: dict[str, str]) -> None:
    a = _create(client, owner, name="alpha", tags=["billing"])
    b = _create(client, owner, name="beta", tags=["billing", "ops"])
    c = _create(client, owner, name="gamma", tags=["ops"])
    deleted = client.delete(f"/v1/workflows/{c['id']}", headers={**owner, "If-Match": '"1"'}).json()
    fresh = {**owner, **_fresh(deleted["position"])}

    listed = client.get(
        "/v1/workflows",
        params={"filter": json.dumps({"tags": "billing"}), "sort": "name"},
        headers=fresh,
    )
    assert listed.status_code == 200, listed.text
    assert [w["name"] for w in listed.json()["items"]] == ["alpha", "beta"]
    assert "x-projection-position" in listed.headers

    everything = client.get("/v1/workflows", params={"sort": "-name"}, headers=fresh).json()
    assert [w["id"] for w in everything["items"]] == [b["id"], a["id"]]

    with_deleted = client.get(
        "/v1/workflows", params={"filter": json.dumps({"deleted": True})}, headers=fresh
    ).json()
    assert [w["id"] for w in with_deleted["items"]] == [c["id"]]


def test_bad_queries_are_400_naming_the_problem(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    cases = [
        ({"filter": "{not json"}, "JSON"),
        ({"filter": json.dumps({"name": {"$where": "1"}})}, "$where"),
        ({"sort": "name;drop"}, "sort"),
        ({"cursor": "garbage"}, "cursor"),
    ]
    for params, word in cases:
        response = client.get("/v1/workflows", params=params, headers=owner)
        assert response.status_code == 400, (params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert word in response.json()["detail"]
    assert client.get("/v1/workflows?limit=0", headers=owner).status_code == 422
    assert client.get("/v1/workflows?limit=501", headers=owner).status_code == 422
    bad_min = client.get("/v1/workflows", headers={**owner, "X-Min-Position": "soon"})
    assert bad_min.status_code == 400


def test_keyset_paging_neither_repeats_nor_skips_under_concurrent_writes(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    originals = [_create(client, owner, name=f"page{i:02d}") for i in range(23)]
    last = originals[-1]["position"]
    seen: list[str] = []
    cursor = None
    page_number = 0
    while True:
        params: dict[str, Any] = {"limit": 5}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/workflows", params=params, headers={**owner, **_fresh(last)}).json()
        seen += [w["id"] for w in page["items"]]
        # Writes land between pages: new workflows and updates to old ones.
        extra = _create(client, owner, name=f"late{page_number}")
        target = originals[page_number]
        updated = client.patch(
            f"/v1/workflows/{target['id']}",
            json={"description": "touched"},
            headers={**owner, "If-Match": '"1"'},
        ).json()
        last = max(extra["position"], updated["position"])
        page_number += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    original_ids = {w["id"] for w in originals}
    assert len(seen) == len(set(seen)), "an item was repeated"
    assert original_ids <= set(seen), "an item was skipped"


def test_versions_are_listed_and_readable(client: httpx.Client, owner: dict[str, str]) -> None:
    created = _create(client, owner, name="v1")
    updated = client.patch(
        f"/v1/workflows/{created['id']}", json={"name": "v2"}, headers={**owner, "If-Match": '"1"'}
    ).json()
    fresh = {**owner, **_fresh(updated["position"])}
    versions = client.get(f"/v1/workflows/{created['id']}/versions", headers=fresh).json()
    assert [(v["version"], v["name"]) for v in versions["items"]] == [(1, "v1"), (2, "v2")]
    one = client.get(f"/v1/workflows/{created['id']}/versions/1", headers=fresh)
    assert one.status_code == 200 and one.json()["name"] == "v1"
    assert client.get(f"/v1/workflows/{created['id']}/versions/9", headers=fresh).status_code == 404


def test_queries_are_confined_to_the_callers_organisation(
    client: httpx.Client, owner: dict[str, str], make_key: Any
) -> None:
    mine = _create(client, owner, name="secret")
    intruder = {"Authorization": f"Bearer {make_key(f'other-{uuid.uuid4().hex[:8]}', 'viewer')}"}
    fresh = _fresh(mine["position"])
    assert (
        client.get(f"/v1/workflows/{mine['id']}", headers={**intruder, **fresh}).status_code == 404
    )
    assert (
        client.get(
            f"/v1/workflows/{mine['id']}/versions", headers={**intruder, **fresh}
        ).status_code
        == 404
    )
    listed = client.get(
        "/v1/workflows",
        params={"filter": json.dumps({"$or": [{"name": "secret"}, {"id": mine["id"]}]})},
        headers={**intruder, **fresh},
    ).json()
    assert listed["items"] == []


def test_every_role_may_read_and_anonymous_may_not(
    client: httpx.Client, owner: dict[str, str], org: str, make_key: Any
) -> None:
    created = _create(client, owner)
    for role in ("viewer", "auditor", "editor", "owner"):
        headers = {"Authorization": f"Bearer {make_key(org, role)}", **_fresh(created["position"])}
        assert client.get(f"/v1/workflows/{created['id']}", headers=headers).status_code == 200
    assert client.get(f"/v1/workflows/{created['id']}").status_code == 401


def test_aggregate_runs_a_dashboard_pipeline_in_the_callers_organisation(
    client: httpx.Client, owner: dict[str, str], make_key: Any
) -> None:
    _create(client, owner, name="one", tags=["a"])
    _create(client, owner, name="two", tags=["b", "a"])
    last = _create(client, owner, name="three", tags=["a"])
    other_org = f"other-{uuid.uuid4().hex[:8]}"
    outsider = {"Authorization": f"Bearer {make_key(other_org, 'owner')}"}
    elsewhere = _create(client, outsider, name="elsewhere", tags=["a"])
    pipeline = [
        {"$match": {"org_id": {"$exists": False}}},
        {"$unwind": "$tags"},
        {"$group": {"_id": "$tags", "n": {"$count": {}}, "names": {"$push": "$name"}}},
        {"$sort": {"_id": 1}},
    ]
    response = client.post(
        "/v1/query/workflows/aggregate",
        json={"pipeline": pipeline},
        headers={**owner, **_fresh(last["position"] + 1)},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "results": [
            {"_id": "a", "n": 3, "names": ["one", "two", "three"]},
            {"_id": "b", "n": 1, "names": ["two"]},
        ]
    }
    assert int(response.headers["x-projection-position"]) >= last["position"]
    for trespass in ({"org_id": other_org}, {"id": elsewhere["id"]}, {"name": "elsewhere"}):
        peek = client.post(
            "/v1/query/workflows/aggregate",
            json={"pipeline": [{"$match": trespass}]},
            headers={**owner, **_fresh(elsewhere["position"])},
        )
        assert peek.status_code == 200 and peek.json() == {"results": []}, trespass


def test_aggregate_rejects_what_it_cannot_run(client: httpx.Client, owner: dict[str, str]) -> None:
    def post(collection: str, body: Any, headers: dict[str, str] = owner) -> httpx.Response:
        return client.post(f"/v1/query/{collection}/aggregate", json=body, headers=headers)

    unknown_stage = post("workflows", {"pipeline": [{"$out": "x"}]})
    assert unknown_stage.status_code == 400 and "unknown stage '$out'" in unknown_stage.text
    assert unknown_stage.headers["content-type"] == "application/problem+json"
    not_a_list = post("workflows", {"pipeline": {"$match": {}}})
    assert not_a_list.status_code == 400, not_a_list.text
    missing = post("workflows", {})
    assert missing.status_code == 422
    assert post("users", {"pipeline": []}).status_code == 404
    assert post("workflows", {"pipeline": []}, headers={}).status_code == 401
