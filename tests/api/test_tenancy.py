"""Organisations and API keys through the API (issue 18): suspension, per-organisation
limits, the key lifecycle with expiry, the audit events, and who may do what."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from infrastructure.auth import ApiKeyStore, Role
from infrastructure.database import PgTarget, create_engine
from infrastructure.settings import Settings
from tests.api.test_bounded_reads import serve
from tests.helpers import trigger, webhook_body, workflow_body

pytestmark = pytest.mark.usefixtures("live_projector")

Headers = dict[str, str]


@pytest.fixture(scope="module")
def url(app_settings: Settings, db_target: PgTarget) -> Iterator[str]:
    # No caching: each test sees its own suspensions and revocations at once.
    settings = app_settings.model_copy(
        update={"org_policy_cache_s": 0, "auth_cache_seconds": 0, "max_workflows_per_org": 2}
    )
    with serve(settings, db_target) as url:
        yield url


@pytest.fixture
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


def bearer(key: str) -> Headers:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def admin(make_key: Callable[[str, str], str]) -> Headers:
    return bearer(make_key(f"platform-{uuid.uuid4().hex[:8]}", "platform_admin"))


@pytest.fixture
def owner(org: str, make_key: Callable[[str, str], str]) -> Headers:
    return bearer(make_key(org, "owner"))


def audit(client: httpx.Client, owner: Headers, **query: Any) -> list[dict[str, Any]]:
    answer = client.get("/v1/audit/events", params={"limit": 500, **query}, headers=owner)
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]  # type: ignore[no-any-return]


def set_limits(client: httpx.Client, admin: Headers, org: str, **limits: Any) -> None:
    answer = client.put(f"/v1/admin/organisations/{org}/limits", json=limits, headers=admin)
    assert answer.status_code == 200, answer.text
    assert answer.json()["limits"] == limits


def create_workflow(client: httpx.Client, owner: Headers, **body: Any) -> httpx.Response:
    return client.post("/v1/workflows", json=workflow_body(**body), headers=owner)


# -- who may do what ---------------------------------------------------------------


def test_only_platform_admins_manage_organisations_and_they_see_no_workflows(
    client: httpx.Client, owner: Headers, admin: Headers, org: str
) -> None:
    for method, path, body in [
        ("GET", "/v1/admin/organisations", None),
        ("GET", f"/v1/admin/organisations/{org}", None),
        ("POST", "/v1/admin/organisations", {"id": f"new-{uuid.uuid4().hex[:8]}"}),
        ("POST", f"/v1/admin/organisations/{org}/suspend", {}),
        ("PUT", f"/v1/admin/organisations/{org}/limits", {"max_workflows": 5}),
    ]:
        refused = client.request(method, path, json=body, headers=owner)
        assert refused.status_code == 403, (path, refused.text)
        assert "organisations:manage" in refused.json()["detail"]
    # Least privilege: managing organisations is not reading them.
    for path in ("/v1/workflows", "/v1/executions", "/v1/audit/events", "/v1/keys"):
        assert client.get(path, headers=admin).status_code == 403, path
    assert create_workflow(client, admin).status_code == 403
    assert client.get("/v1/admin/organisations", headers=admin).status_code == 200


def test_admins_create_list_get_and_rename_organisations(
    client: httpx.Client, admin: Headers, owner: Headers, org: str
) -> None:
    new = f"acme-{uuid.uuid4().hex[:8]}"
    created = client.post(
        "/v1/admin/organisations",
        json={"id": new, "name": "Acme", "limits": {"max_workflows": 3}},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "active" and created.json()["limits"] == {"max_workflows": 3}
    again = client.post("/v1/admin/organisations", json={"id": new}, headers=admin)
    assert again.status_code == 409 and again.json()["type"].endswith("/organisation-exists")
    renamed = client.patch(
        f"/v1/admin/organisations/{new}", json={"name": "Acme Ltd"}, headers=admin
    )
    assert renamed.status_code == 200 and renamed.json()["name"] == "Acme Ltd"
    got = client.get(f"/v1/admin/organisations/{new}", headers=admin).json()
    assert got["name"] == "Acme Ltd" and got["registered"] is True
    # An organisation known only by its keys: active, global limits, no record yet.
    legacy = client.get(f"/v1/admin/organisations/{org}", headers=admin).json()
    assert legacy == {**legacy, "status": "active", "limits": {}, "registered": False}
    assert client.get("/v1/admin/organisations/nobody-here", headers=admin).status_code == 404
    # Listed by id, keyset-paginated, the legacy one included.
    seen: list[str] = []
    after = ""
    while True:
        page = client.get(
            "/v1/admin/organisations", params={"after": after, "limit": 50}, headers=admin
        ).json()
        seen += [item["id"] for item in page["items"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert new in seen and org in seen and seen == sorted(set(seen))
    assert (
        client.post("/v1/admin/organisations/no-such-org/suspend", json={}, headers=admin)
    ).status_code == 404


# -- suspension ----------------------------------------------------------------------


def test_a_suspended_organisation_is_refused_everywhere_and_reinstating_loses_nothing(
    client: httpx.Client, admin: Headers, owner: Headers, org: str, make_key: Callable[..., str]
) -> None:
    viewer = bearer(make_key(org, "viewer"))
    created = client.post("/v1/workflows", json=webhook_body("kept", path="in"), headers=owner)
    assert created.status_code == 201, created.text
    workflow_id = created.json()["id"]
    etag = created.headers["ETag"]
    activated = client.post(
        f"/v1/workflows/{workflow_id}/activate", headers={**owner, "If-Match": etag}
    )
    assert activated.status_code == 200, activated.text
    assert client.post(f"/hooks/{org}/in", json={"n": 1}).status_code == 202

    suspended = client.post(
        f"/v1/admin/organisations/{org}/suspend", json={"reason": "unpaid"}, headers=admin
    )
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["status"] == "suspended"

    for headers, method, path in [
        (owner, "GET", "/v1/workflows"),
        (owner, "GET", f"/v1/workflows/{workflow_id}"),
        (viewer, "GET", f"/v1/workflows/{workflow_id}/history"),
        (owner, "GET", "/v1/executions"),
        (owner, "GET", "/v1/audit/events"),
        (owner, "GET", "/v1/keys"),
        (owner, "POST", "/v1/workflows"),
        (owner, "POST", f"/v1/workflows/{workflow_id}/executions"),
        (owner, "POST", "/v1/keys"),
        (None, "POST", f"/hooks/{org}/in"),
    ]:
        refused = client.request(method, path, json={}, headers=headers or {})
        assert refused.status_code == 403, (path, refused.text)
        problem = refused.json()
        assert problem["type"].endswith("/organisation-suspended"), path
        assert "unpaid" in problem["detail"]

    reinstated = client.post(f"/v1/admin/organisations/{org}/reinstate", headers=admin)
    assert reinstated.status_code == 200 and reinstated.json()["status"] == "active"
    got = client.get(
        f"/v1/workflows/{workflow_id}",
        headers={**viewer, "X-Min-Position": str(reinstated.json()["position"])},
    )
    assert got.status_code == 200 and got.json()["name"] == "kept"
    assert client.post(f"/hooks/{org}/in", json={"n": 2}).status_code == 202
    types = [(e["type"], e["actor"]) for e in audit(client, owner)]
    admin_actor = [a for t, a in types if t == "Organisation.Suspended"]
    assert admin_actor and admin_actor[0].startswith("apikey:")
    assert [t for t, _ in types if t.startswith("Organisation.")] == [
        "Organisation.Created",
        "Organisation.Suspended",
        "Organisation.Reinstated",
    ]


# -- API keys -------------------------------------------------------------------------


def test_key_lifecycle_shown_once_listed_revoked_and_audited(
    client: httpx.Client, owner: Headers, org: str, make_key: Callable[..., str]
) -> None:
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    created = client.post(
        "/v1/keys", json={"role": "editor", "name": "ci", "expires_at": expires}, headers=owner
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["key"].startswith("rr_") and key["status"] == "active" and key["org_id"] == org
    assert created.headers["Cache-Control"] == "no-store"
    editor = bearer(key["key"])
    made = create_workflow(client, editor)
    assert made.status_code == 201, made.text

    listed = client.get("/v1/keys", headers=owner)
    assert listed.status_code == 200
    assert key["key"] not in listed.text  # never shown again
    ours = [item for item in listed.json()["items"] if item["id"] == key["id"]]
    assert ours and "key" not in ours[0] and ours[0]["expires_at"] is not None

    # Owners only, and never a platform_admin key.
    assert client.post("/v1/keys", json={"role": "viewer"}, headers=editor).status_code == 403
    minted = client.post("/v1/keys", json={"role": "platform_admin"}, headers=owner)
    assert minted.status_code == 403 and "CLI" in minted.json()["detail"]
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    stale = client.post("/v1/keys", json={"role": "viewer", "expires_at": past}, headers=owner)
    assert stale.status_code == 422

    revoked = client.delete(f"/v1/keys/{key['id']}", headers=owner)
    assert revoked.status_code == 200, revoked.text
    refused = client.get("/v1/workflows", headers=editor)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert client.delete(f"/v1/keys/{key['id']}", headers=owner).status_code == 404
    status = {i["id"]: i["status"] for i in client.get("/v1/keys", headers=owner).json()["items"]}
    assert status[key["id"]] == "revoked"

    # Another organisation's owner cannot revoke a key, nor see it.
    other = bearer(make_key(f"other-{uuid.uuid4().hex[:8]}", "owner"))
    assert key["id"] not in client.get("/v1/keys", headers=other).text
    second = client.post("/v1/keys", json={"role": "viewer"}, headers=owner).json()
    assert client.delete(f"/v1/keys/{second['id']}", headers=other).status_code == 404
    assert client.get("/v1/workflows", headers=bearer(second["key"])).status_code == 200

    events = audit(client, owner, aggregate_id=key["id"])
    assert [e["type"] for e in events] == ["ApiKey.Created", "ApiKey.Revoked"]
    assert {e["actor"] for e in events} == {f"apikey:{_key_id(client, owner)}"}
    assert key["key"] not in str(events)  # the secret never enters the log


def _key_id(client: httpx.Client, owner: Headers) -> str:
    """The id of the key behind ``owner`` (the fixture's; made without an event)."""
    items = client.get("/v1/keys", headers=owner).json()["items"]
    return next(item["id"] for item in items if item["name"] == "test")


def test_an_expired_key_is_refused_with_401_naming_expiry(
    client: httpx.Client, db_target: PgTarget, org: str
) -> None:
    async def make(expires_at: datetime) -> str:
        engine = create_engine(db_target, pool_size=1)
        try:
            _, plaintext = await ApiKeyStore(engine).create(
                org, Role.OWNER, "short", expires_at=expires_at
            )
            return plaintext
        finally:
            await engine.dispose()

    expired = asyncio.run(make(datetime.now(UTC) - timedelta(seconds=1)))
    refused = client.get("/v1/workflows", headers=bearer(expired))
    assert refused.status_code == 401
    assert refused.json()["type"].endswith("/key-expired")
    assert "expired" in refused.json()["detail"]
    valid = asyncio.run(make(datetime.now(UTC) + timedelta(hours=1)))
    assert client.get("/v1/workflows", headers=bearer(valid)).status_code == 200


def test_legacy_keys_revoked_through_the_api_get_their_creation_recorded(
    client: httpx.Client, owner: Headers, org: str, make_key: Callable[..., str]
) -> None:
    old = make_key(org, "viewer")  # a key from before keys had events
    old_id = next(
        i["id"]
        for i in client.get("/v1/keys", headers=owner).json()["items"]
        if i["role"] == "viewer"
    )
    assert client.delete(f"/v1/keys/{old_id}", headers=owner).status_code == 200
    assert client.get("/v1/workflows", headers=bearer(old)).status_code == 401
    events = audit(client, owner, aggregate_id=old_id)
    assert [e["type"] for e in events] == ["ApiKey.Created", "ApiKey.Revoked"]


# -- per-organisation limits ---------------------------------------------------------


def _wait_for_view(client: httpx.Client, owner: Headers, created: httpx.Response) -> None:
    seen = client.get(
        f"/v1/workflows/{created.json()['id']}",
        headers={**owner, "X-Min-Position": str(created.json()["position"])},
    )
    assert seen.status_code == 200, seen.text


def test_max_workflows_of_the_organisation_overrides_the_global_limit(
    client: httpx.Client, admin: Headers, owner: Headers, org: str, make_key: Callable[..., str]
) -> None:
    # Global (this server): 2. Ours: 1.
    set_limits(client, admin, org, max_workflows=1)
    first = create_workflow(client, owner, name="one")
    assert first.status_code == 201
    _wait_for_view(client, owner, first)
    refused = create_workflow(client, owner, name="two")
    assert refused.status_code == 409, refused.text
    assert (
        refused.json()["limit"] == "max_workflows" and "max_workflows" in refused.json()["detail"]
    )

    # Raised above the global one: 3 fit.
    set_limits(client, admin, org, max_workflows=3)
    for name in ("two", "three"):
        made = create_workflow(client, owner, name=name)
        assert made.status_code == 201, made.text
        _wait_for_view(client, owner, made)
    assert create_workflow(client, owner, name="four").status_code == 409

    # Every door that creates counts: an import of our own format, a template's
    # instance (the same create command) are refused past the limit too.
    exported = client.get(f"/v1/workflows/{first.json()['id']}/export", headers=owner)
    imported = client.post("/v1/import", json=exported.json(), headers=owner)
    assert imported.status_code == 409 and imported.json()["limit"] == "max_workflows"
    # A delete makes room at once (no view to wait for).
    deleted = client.delete(
        f"/v1/workflows/{first.json()['id']}", headers={**owner, "If-Match": '"1"'}
    )
    assert deleted.status_code == 200, deleted.text
    assert create_workflow(client, owner, name="five").status_code == 201

    # Another organisation has the global 2.
    other = bearer(make_key(f"other-{uuid.uuid4().hex[:8]}", "owner"))
    for name in ("a", "b"):
        made = create_workflow(client, other, name=name)
        assert made.status_code == 201
        _wait_for_view(client, other, made)
    assert create_workflow(client, other, name="c").json()["limit"] == "max_workflows"


def test_executions_per_day_past_the_limit_is_429_until_utc_midnight(
    client: httpx.Client, admin: Headers, owner: Headers, org: str
) -> None:
    set_limits(client, admin, org, executions_per_day=2)
    workflow_id = create_workflow(client, owner).json()["id"]
    run = f"/v1/workflows/{workflow_id}/executions"
    for _ in range(2):
        assert client.post(run, json={"mode": "async"}, headers=owner).status_code == 202
    # A run that cannot start (no such workflow) does not use up the allowance.
    missing = client.post(f"/v1/workflows/{uuid.uuid4()}/executions", json={}, headers=owner)
    assert missing.status_code in (404, 429)
    refused = client.post(run, json={"mode": "async"}, headers=owner)
    assert refused.status_code == 429, refused.text
    assert refused.json()["limit"] == "executions_per_day"
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    retry_after = int(refused.headers["Retry-After"])
    assert abs(retry_after - (midnight - now).total_seconds()) < 120
    # Raising the limit lets the next one through; its keyed retry is the first answer,
    # not another run (nor a 429).
    set_limits(client, admin, org, executions_per_day=3)
    keyed = {**owner, "Idempotency-Key": f"run-{uuid.uuid4()}"}
    first = client.post(run, json={"mode": "async"}, headers=keyed)
    assert first.status_code == 202
    again = client.post(run, json={"mode": "async"}, headers=keyed)
    assert again.status_code == 202 and again.json() == first.json()
    assert client.post(run, json={"mode": "async"}, headers=owner).status_code == 429


def test_a_failed_start_gives_its_execution_back(
    client: httpx.Client, admin: Headers, owner: Headers, org: str
) -> None:
    set_limits(client, admin, org, executions_per_day=1)
    for _ in range(3):
        missing = client.post(f"/v1/workflows/{uuid.uuid4()}/executions", json={}, headers=owner)
        assert missing.status_code == 404
    workflow_id = create_workflow(client, owner).json()["id"]
    run = f"/v1/workflows/{workflow_id}/executions"
    assert client.post(run, json={"mode": "async"}, headers=owner).status_code == 202
    assert client.post(run, json={"mode": "async"}, headers=owner).status_code == 429


@pytest.mark.skipif("not __import__('os').environ.get('REDIS_URL')", reason="needs Redis")
def test_the_organisations_rate_limit_overrides_the_global_one(
    client: httpx.Client, admin: Headers, owner: Headers, org: str
) -> None:
    # Global: 200 reads/s in bursts of 400. Ours: bursts of 3, refilled once a day.
    set_limits(client, admin, org, read_per_s=0.00001, read_burst=3)
    answers = [client.get("/v1/workflows", headers=owner) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["RateLimit-Limit"] == "3"
    assert "organisation's own limit" in answers[3].json()["detail"]


def test_the_organisations_sync_run_cap_overrides_the_global_one(
    client: httpx.Client, admin: Headers, owner: Headers, org: str
) -> None:
    # Global: 4 sync runs at once per organisation. Ours: 1.
    set_limits(client, admin, org, sync_runs=1)
    nap = create_workflow(
        client,
        owner,
        name="nap",
        nodes=[trigger(), {"id": "nap", "type": "wait", "parameters": {"ms": 3000}}],
        connections=[{"from": "start", "to": "nap"}],
    )
    run = f"/v1/workflows/{nap.json()['id']}/executions"
    answers: list[httpx.Response] = []

    def sync_run() -> None:
        answers.append(client.post(run, json={"mode": "sync"}, headers=owner))

    threads = [threading.Thread(target=sync_run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Both were sent before either could finish its 3 s wait: one ran, one was refused.
    assert sorted(a.status_code for a in answers) == [200, 429], [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 429)
    assert "organisation's own limit" in refused.json()["detail"]


def test_webhook_calls_count_against_executions_per_day(
    client: httpx.Client, admin: Headers, owner: Headers, org: str
) -> None:
    created = client.post("/v1/workflows", json=webhook_body("hooked", path="in"), headers=owner)
    activated = client.post(
        f"/v1/workflows/{created.json()['id']}/activate",
        headers={**owner, "If-Match": created.headers["ETag"]},
    )
    assert activated.status_code == 200, activated.text
    set_limits(client, admin, org, executions_per_day=1)
    # A call to no hook starts nothing and uses up nothing.
    assert client.post(f"/hooks/{org}/elsewhere", json={}).status_code == 404
    assert client.post(f"/hooks/{org}/in", json={}).status_code == 202
    # A webhook's Idempotency-Key header proves nothing: still counted, and refused.
    refused = client.post(f"/hooks/{org}/in", json={}, headers={"Idempotency-Key": "x"})
    assert refused.status_code == 429 and refused.json()["limit"] == "executions_per_day"
    assert "Retry-After" in refused.headers
