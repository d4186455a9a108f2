"""The write API over real HTTP against the real PostgreSQL event store."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from commands import WorkflowApplication
from domain.workflow import Workflow
from tests.helpers import noop, trigger, workflow_body


def _events(app: WorkflowApplication, workflow_id: str) -> list[Any]:
    return list(app.events.get(uuid.UUID(workflow_id)))


def _max_position(app: WorkflowApplication) -> int:
    return app.recorder.max_notification_id() or 0


def _create(client: httpx.Client, headers: dict[str, str], **body: Any) -> httpx.Response:
    response = client.post("/v1/workflows", json=workflow_body(**body), headers=headers)
    assert response.status_code == 201, response.text
    return response


def _assert_problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"] and problem["type"]
    for word in words:
        assert word in problem["detail"], (word, problem["detail"])
    return problem


def test_create_returns_id_version_position_and_records_who(
    client: httpx.Client, owner: dict[str, str], org: str, workflow_app: WorkflowApplication
) -> None:
    response = client.post(
        "/v1/workflows",
        json=workflow_body("hello", tags=["demo"]),
        headers={**owner, "X-Request-ID": "req-create-1"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["version"] == 1
    assert response.headers["location"] == f"/v1/workflows/{body['id']}"
    assert response.headers["etag"] == '"1"'
    assert response.headers["x-log-position"] == str(body["position"])
    assert response.headers["x-request-id"] == "req-create-1"

    [created] = _events(workflow_app, body["id"])
    assert type(created).__qualname__ == "Workflow.Created"
    assert created.meta["org_id"] == org
    assert created.meta["actor"].startswith("apikey:")
    assert created.meta["correlation_id"] == "req-create-1"
    assert created.meta["idempotency_key"] is None
    notification = workflow_app.recorder.select_notifications(body["position"], 1)[0]
    assert str(notification.originator_id) == body["id"]
    workflow = workflow_app.repository.get(uuid.UUID(body["id"]))
    assert isinstance(workflow, Workflow)
    assert workflow.name == "hello" and workflow.tags == ["demo"] and workflow.org_id == org


def test_update_and_delete_with_if_match(
    client: httpx.Client, owner: dict[str, str], workflow_app: WorkflowApplication
) -> None:
    workflow_id = _create(client, owner).json()["id"]
    updated = client.patch(
        f"/v1/workflows/{workflow_id}",
        json={"name": "renamed", "description": "now with words"},
        headers={**owner, "If-Match": '"1"'},
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["version"] == 2
    assert updated.headers["etag"] == '"2"'
    assert int(updated.headers["x-log-position"]) == updated.json()["position"]

    deleted = client.delete(f"/v1/workflows/{workflow_id}", headers={**owner, "If-Match": "2"})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["version"] == 3

    kinds = [type(e).__qualname__ for e in _events(workflow_app, workflow_id)]
    assert kinds == ["Workflow.Created", "Workflow.Updated", "Workflow.Deleted"]
    assert _events(workflow_app, workflow_id)[1].changes == {
        "name": "renamed",
        "description": "now with words",
    }


def test_deleted_workflow_is_gone_and_keeps_history(
    client: httpx.Client, owner: dict[str, str], workflow_app: WorkflowApplication
) -> None:
    workflow_id = _create(client, owner).json()["id"]
    assert (
        client.delete(
            f"/v1/workflows/{workflow_id}", headers={**owner, "If-Match": '"1"'}
        ).status_code
        == 200
    )
    patch = client.patch(
        f"/v1/workflows/{workflow_id}", json={"name": "x"}, headers={**owner, "If-Match": '"2"'}
    )
    _assert_problem(patch, 410, "deleted")
    again = client.delete(f"/v1/workflows/{workflow_id}", headers={**owner, "If-Match": '"2"'})
    _assert_problem(again, 410, "deleted")
    assert len(_events(workflow_app, workflow_id)) == 2


def test_if_match_is_required_and_checked(client: httpx.Client, owner: dict[str, str]) -> None:
    workflow_id = _create(client, owner).json()["id"]
    url = f"/v1/workflows/{workflow_id}"
    _assert_problem(client.patch(url, json={"name": "x"}, headers=owner), 428, "If-Match")
    _assert_problem(client.delete(url, headers=owner), 428, "If-Match")
    _assert_problem(
        client.patch(url, json={"name": "x"}, headers={**owner, "If-Match": "*"}), 400, "If-Match"
    )
    _assert_problem(
        client.patch(url, json={"name": "x"}, headers={**owner, "If-Match": '"abc"'}), 400
    )
    stale = client.patch(url, json={"name": "x"}, headers={**owner, "If-Match": '"7"'})
    problem = _assert_problem(stale, 409, "version 1")
    assert problem["current_version"] == 1 and problem["expected_version"] == 7
    assert stale.headers["etag"] == '"1"'


def test_unchanged_update_writes_nothing(
    client: httpx.Client, owner: dict[str, str], workflow_app: WorkflowApplication
) -> None:
    created = _create(client, owner, name="same").json()
    response = client.patch(
        f"/v1/workflows/{created['id']}",
        json={"name": "same"},
        headers={**owner, "If-Match": '"1"'},
    )
    assert response.status_code == 200
    assert response.json() == created
    assert len(_events(workflow_app, created["id"])) == 1


def test_twenty_concurrent_updates_from_one_version_one_wins(
    api_url: str, owner: dict[str, str], workflow_app: WorkflowApplication
) -> None:
    with httpx.Client(base_url=api_url, timeout=30) as client:
        workflow_id = _create(client, owner).json()["id"]

    def update(i: int) -> int:
        with httpx.Client(base_url=api_url, timeout=30) as c:
            return c.patch(
                f"/v1/workflows/{workflow_id}",
                json={"name": f"writer {i}"},
                headers={**owner, "If-Match": '"1"'},
            ).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(update, range(20)))
    assert sorted(statuses) == [200] + [409] * 19
    events = _events(workflow_app, workflow_id)
    assert len(events) == 2
    assert events[1].changes["name"].startswith("writer ")


def test_idempotent_create_returns_first_answer_and_writes_once(
    client: httpx.Client, owner: dict[str, str], workflow_app: WorkflowApplication
) -> None:
    headers = {**owner, "Idempotency-Key": "create-1"}
    first = client.post("/v1/workflows", json=workflow_body("a"), headers=headers)
    before = _max_position(workflow_app)
    # Same content, different key order and spacing: still the same request.
    raw = json.dumps(dict(reversed(list(workflow_body("a").items()))), indent=2)
    second = client.post(
        "/v1/workflows", content=raw, headers={**headers, "Content-Type": "application/json"}
    )
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["location"] == first.headers["location"]
    assert _max_position(workflow_app) == before
    assert len(_events(workflow_app, first.json()["id"])) == 1
    assert first.json()["id"] == str(uuid.UUID(first.json()["id"]))

    different = client.post("/v1/workflows", json=workflow_body("b"), headers=headers)
    _assert_problem(different, 422, "Idempotency-Key")
    assert _max_position(workflow_app) == before


def test_racing_identical_idempotent_creates_make_one_workflow(
    api_url: str, owner: dict[str, str], workflow_app: WorkflowApplication
) -> None:
    key = f"race-{uuid.uuid4()}"

    def create(_: int) -> httpx.Response:
        with httpx.Client(base_url=api_url, timeout=30) as c:
            return c.post(
                "/v1/workflows",
                json=workflow_body("raced"),
                headers={**owner, "Idempotency-Key": key},
            )

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(create, range(16)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert len({r.json()["position"] for r in responses}) == 1
    assert len(_events(workflow_app, responses[0].json()["id"])) == 1


def test_idempotent_update_replays_first_answer(
    client: httpx.Client, owner: dict[str, str], workflow_app: WorkflowApplication
) -> None:
    workflow_id = _create(client, owner).json()["id"]
    headers = {**owner, "If-Match": '"1"', "Idempotency-Key": "patch-1"}
    first = client.patch(f"/v1/workflows/{workflow_id}", json={"name": "v2"}, headers=headers)
    second = client.patch(f"/v1/workflows/{workflow_id}", json={"name": "v2"}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() and first.json()["version"] == 2
    assert len(_events(workflow_app, workflow_id)) == 2
    other = client.patch(f"/v1/workflows/{workflow_id}", json={"name": "v3"}, headers=headers)
    _assert_problem(other, 422, "Idempotency-Key")


def test_idempotency_keys_are_per_organisation(
    client: httpx.Client, owner: dict[str, str], make_key: Any
) -> None:
    other_owner = {"Authorization": f"Bearer {make_key(f'other-{uuid.uuid4().hex[:8]}', 'owner')}"}
    a = client.post(
        "/v1/workflows", json=workflow_body(), headers={**owner, "Idempotency-Key": "k"}
    )
    b = client.post(
        "/v1/workflows", json=workflow_body(), headers={**other_owner, "Idempotency-Key": "k"}
    )
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]


def test_authentication_is_required(client: httpx.Client, make_key: Any, org: str) -> None:
    _assert_problem(client.post("/v1/workflows", json=workflow_body()), 401, "Authorization")
    bad = {"Authorization": "Bearer rr_not-a-real-key"}
    _assert_problem(client.post("/v1/workflows", json=workflow_body(), headers=bad), 401, "invalid")
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    _assert_problem(
        client.post("/v1/workflows", json=workflow_body(), headers=basic), 401, "Bearer"
    )


def test_revoked_key_is_refused(client: httpx.Client, org: str, db_target: Any) -> None:
    import asyncio

    from infrastructure.auth import ApiKeyStore, Role
    from infrastructure.database import create_engine

    async def create_and_revoke() -> str:
        engine = create_engine(db_target, pool_size=1)
        store = ApiKeyStore(engine)
        info, plaintext = await store.create(org, Role.OWNER, "short-lived")
        assert await store.revoke(info.id)
        assert not await store.revoke(info.id)
        await engine.dispose()
        return plaintext

    plaintext = asyncio.run(create_and_revoke())
    response = client.post(
        "/v1/workflows", json=workflow_body(), headers={"Authorization": f"Bearer {plaintext}"}
    )
    _assert_problem(response, 401, "revoked")


def test_requests_missing_the_key_cache_together_share_one_lookup(org: str, db_target: Any) -> None:
    import asyncio

    from infrastructure.auth import ApiKeyStore, Principal, Role
    from infrastructure.database import create_engine

    lookups = 0

    class CountingStore(ApiKeyStore):
        async def _lookup(self, key_hash: bytes) -> Principal | None:
            nonlocal lookups
            lookups += 1
            return await super()._lookup(key_hash)

    async def scenario() -> tuple[Any, ...]:
        engine = create_engine(db_target, pool_size=2)
        try:
            store = CountingStore(engine, cache_seconds=60)
            info, plaintext = await store.create(org, Role.EDITOR)
            together = await asyncio.gather(*(store.authenticate(plaintext) for _ in range(20)))
            cached = await store.authenticate(plaintext)
            wrong = await asyncio.gather(*(store.authenticate(plaintext + "x") for _ in range(5)))
            wrong_again = await store.authenticate(plaintext + "x")  # failures are not cached
            return info, together, cached, wrong, wrong_again
        finally:
            await engine.dispose()

    info, together, cached, wrong, wrong_again = asyncio.run(scenario())
    assert {p.key_id for p in [*together, cached]} == {info.id}
    assert wrong == [None] * 5 and wrong_again is None
    assert lookups == 3


@pytest.mark.parametrize("role", ["viewer", "auditor"])
def test_read_only_roles_cannot_mutate(
    client: httpx.Client,
    owner: dict[str, str],
    org: str,
    make_key: Any,
    role: str,
    workflow_app: WorkflowApplication,
) -> None:
    workflow_id = _create(client, owner).json()["id"]
    reader = {"Authorization": f"Bearer {make_key(org, role)}"}
    before = _max_position(workflow_app)
    _assert_problem(client.post("/v1/workflows", json=workflow_body(), headers=reader), 403, role)
    patch = client.patch(
        f"/v1/workflows/{workflow_id}", json={"name": "x"}, headers={**reader, "If-Match": '"1"'}
    )
    _assert_problem(patch, 403, role)
    delete = client.delete(f"/v1/workflows/{workflow_id}", headers={**reader, "If-Match": '"1"'})
    _assert_problem(delete, 403, role)
    assert _max_position(workflow_app) == before


def test_editor_may_mutate(client: httpx.Client, org: str, make_key: Any) -> None:
    editor = {"Authorization": f"Bearer {make_key(org, 'editor')}"}
    workflow_id = _create(client, editor).json()["id"]
    patch = client.patch(
        f"/v1/workflows/{workflow_id}", json={"tags": ["x"]}, headers={**editor, "If-Match": '"1"'}
    )
    assert patch.status_code == 200
    assert (
        client.delete(
            f"/v1/workflows/{workflow_id}", headers={**editor, "If-Match": '"2"'}
        ).status_code
        == 200
    )


def test_other_organisations_workflow_is_not_found(
    client: httpx.Client, owner: dict[str, str], make_key: Any, workflow_app: WorkflowApplication
) -> None:
    workflow_id = _create(client, owner).json()["id"]
    intruder = {"Authorization": f"Bearer {make_key(f'intruder-{uuid.uuid4().hex[:8]}', 'owner')}"}
    patch = client.patch(
        f"/v1/workflows/{workflow_id}", json={"name": "x"}, headers={**intruder, "If-Match": '"1"'}
    )
    _assert_problem(patch, 404, workflow_id)
    delete = client.delete(f"/v1/workflows/{workflow_id}", headers={**intruder, "If-Match": '"1"'})
    _assert_problem(delete, 404, workflow_id)
    missing = client.patch(
        f"/v1/workflows/{uuid.uuid4()}", json={"name": "x"}, headers={**owner, "If-Match": '"1"'}
    )
    assert missing.status_code == 404
    assert len(_events(workflow_app, workflow_id)) == 1


def test_invalid_workflow_is_422_naming_the_problem_and_writes_nothing(
    client: httpx.Client, owner: dict[str, str], workflow_app: WorkflowApplication
) -> None:
    before = _max_position(workflow_app)
    body = workflow_body(
        nodes=[trigger(), noop("a"), noop("b")],
        connections=[{"from": "a", "to": "b"}, {"from": "b", "to": "a"}],
    )
    problem = _assert_problem(client.post("/v1/workflows", json=body, headers=owner), 422, "cycle")
    assert any("cycle" in e["msg"] for e in problem["errors"])
    no_trigger = workflow_body(nodes=[noop("a")], connections=[])
    _assert_problem(client.post("/v1/workflows", json=no_trigger, headers=owner), 422, "trigger")
    assert _max_position(workflow_app) == before


@pytest.mark.parametrize(
    ("where", "raw", "loc", "words"),
    [
        ("position", b"[1e20, 0]", "nodes[1].position[0]", "whole number"),
        ("position", b"[0, 18446744073709551616]", "nodes[1].position[1]", "64-bit"),
        ("name", b'"a\\u0000"', "nodes[1].name", "NUL"),
        ("parameters", b'{"x": 1e400}', "nodes[1].parameters.x", "not a finite number"),
    ],
)
def test_values_the_log_cannot_carry_are_422_naming_where_and_write_nothing(
    client: httpx.Client,
    owner: dict[str, str],
    workflow_app: WorkflowApplication,
    where: str,
    raw: bytes,
    loc: str,
    words: str,
) -> None:
    before = _max_position(workflow_app)
    body = workflow_body(nodes=[trigger(), {**noop("a"), where: "@"}])
    content = json.dumps(body).encode().replace(b'"@"', raw)
    headers = {**owner, "Content-Type": "application/json"}
    created = client.post("/v1/workflows", content=content, headers=headers)
    problem = _assert_problem(created, 422)
    assert [(e["loc"], words in e["msg"]) for e in problem["errors"]] == [(loc, True)]
    assert _max_position(workflow_app) == before
    workflow_id = _create(client, owner).json()["id"]
    patch = json.dumps({"nodes": body["nodes"]}).encode().replace(b'"@"', raw)
    changed = client.patch(
        f"/v1/workflows/{workflow_id}", content=patch, headers={**headers, "If-Match": '"1"'}
    )
    assert _assert_problem(changed, 422)["errors"] == problem["errors"]
    assert len(_events(workflow_app, workflow_id)) == 1


def test_update_is_validated_against_the_whole_definition(
    client: httpx.Client, owner: dict[str, str], workflow_app: WorkflowApplication
) -> None:
    workflow_id = _create(client, owner).json()["id"]
    # Removing the node "a" leaves the existing connection start -> a dangling.
    response = client.patch(
        f"/v1/workflows/{workflow_id}",
        json={"nodes": [trigger()]},
        headers={**owner, "If-Match": '"1"'},
    )
    problem = _assert_problem(response, 422)
    assert any(e["loc"].startswith("connections[0]") for e in problem["errors"])
    assert len(_events(workflow_app, workflow_id)) == 1


@pytest.mark.parametrize(
    ("content", "status", "word"),
    [
        ('{"name": "x", ', 400, "malformed JSON"),
        ("[1, 2]", 422, "body"),
        ('{"name": 5, "nodes": []}', 422, "name"),
        ('{"name": "x", "nodes": [], "colour": "red"}', 422, "colour"),
        ('{"nodes": []}', 422, "name"),
    ],
)
def test_malformed_requests_are_4xx_with_detail(
    client: httpx.Client,
    owner: dict[str, str],
    content: str,
    status: int,
    word: str,
    workflow_app: WorkflowApplication,
) -> None:
    before = _max_position(workflow_app)
    response = client.post(
        "/v1/workflows", content=content, headers={**owner, "Content-Type": "application/json"}
    )
    _assert_problem(response, status, word)
    assert _max_position(workflow_app) == before


def test_patch_rejects_empty_and_null_fields(client: httpx.Client, owner: dict[str, str]) -> None:
    workflow_id = _create(client, owner).json()["id"]
    headers = {**owner, "If-Match": '"1"'}
    _assert_problem(
        client.patch(f"/v1/workflows/{workflow_id}", json={}, headers=headers), 422, "at least one"
    )
    _assert_problem(
        client.patch(f"/v1/workflows/{workflow_id}", json={"name": None}, headers=headers),
        422,
        "null",
    )


def test_oversize_body_is_413(client: httpx.Client, owner: dict[str, str]) -> None:
    body = workflow_body(description="x" * (1024 * 1024 + 10))
    _assert_problem(client.post("/v1/workflows", json=body, headers=owner), 413, "exceeds")


def test_chunked_oversize_body_is_413(client: httpx.Client, owner: dict[str, str]) -> None:
    def chunks() -> Any:
        yield b'{"name": "x", "description": "'
        for _ in range(70):
            yield b"y" * 16384
        yield b'", "nodes": []}'

    response = client.post(
        "/v1/workflows", content=chunks(), headers={**owner, "Content-Type": "application/json"}
    )
    _assert_problem(response, 413)


def test_bad_uuid_and_bad_headers(client: httpx.Client, owner: dict[str, str]) -> None:
    problem = _assert_problem(
        client.patch(
            "/v1/workflows/not-a-uuid", json={"name": "x"}, headers={**owner, "If-Match": '"1"'}
        ),
        422,
    )
    assert "workflow_id" in problem["detail"]
    bad_key = client.post(
        "/v1/workflows", json=workflow_body(), headers={**owner, "Idempotency-Key": "a b"}
    )
    _assert_problem(bad_key, 400, "Idempotency-Key")


def test_unknown_route_and_method_are_problems(client: httpx.Client, owner: dict[str, str]) -> None:
    _assert_problem(client.get("/v1/nothing-here", headers=owner), 404)
    assert client.put("/v1/workflows", headers=owner).status_code == 405


def test_health_readiness_and_docs(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["postgres"] == "ok"
    spec = client.get("/openapi.json").json()
    assert "/v1/workflows" in spec["paths"]
    create = spec["paths"]["/v1/workflows"]["post"]
    assert "examples" in json.dumps(create["requestBody"])
    assert "Idempotency-Key" in json.dumps(create["parameters"])
    patch = spec["paths"]["/v1/workflows/{workflow_id}"]["patch"]
    assert {"If-Match", "Idempotency-Key", "workflow_id"} <= {
        p["name"] for p in patch["parameters"]
    }
    assert client.get("/docs").status_code == 200
