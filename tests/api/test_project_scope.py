"""Projects, project-scoped keys, moves and shares, over real HTTP and PostgreSQL.

``ENDPOINTS`` decides, for every operation of the OpenAPI document and every
console API route, what a project-scoped key gets; a test fails when an
endpoint exists without a decision here (or a decision outlives its
endpoint). The walk then calls every one of them with a key of project A,
once with A's own ids (the answer holds nothing of project B or the default
project) and once with B's (not found, as another organisation's).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from domain.project import default_project_id
from infrastructure.auth import ApiKeyStore, Role
from infrastructure.database import PgTarget, create_engine
from read_api.console import api as console_api
from tests.helpers import webhook_body, workflow_body

pytestmark = pytest.mark.usefixtures("live_projector", "live_executions_projector")

# What a project-scoped key gets from each endpoint:
# - "public": not the tenant's API (health, or a hook's own authentication);
# - "scoped": answers only what the key's project sees; another project's ids are 404
#   (lists and figures simply leave them out);
# - "stream": the SSE stream, scoped (walked separately);
# - "org-only": 403, whatever it names (the organisation's decisions, or the whole log);
# - "catalogue": the organisation's template catalogue, the same for every key of it
#   (publishing, an organisation-wide key's act, is what puts a workflow there).
ENDPOINTS: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/hooks/{org_id}/{path}"): "public",
    ("POST", "/hooks/{org_id}/{path}"): "public",
    ("PUT", "/hooks/{org_id}/{path}"): "public",
    ("PATCH", "/hooks/{org_id}/{path}"): "public",
    ("DELETE", "/hooks/{org_id}/{path}"): "public",
    ("POST", "/v1/workflows"): "scoped",
    ("GET", "/v1/workflows"): "scoped",
    ("GET", "/v1/workflows/{workflow_id}"): "scoped",
    ("PATCH", "/v1/workflows/{workflow_id}"): "scoped",
    ("DELETE", "/v1/workflows/{workflow_id}"): "scoped",
    ("POST", "/v1/workflows/{workflow_id}/revert"): "scoped",
    ("POST", "/v1/workflows/{workflow_id}/executions"): "scoped",
    ("GET", "/v1/workflows/{workflow_id}/executions"): "scoped",
    ("POST", "/v1/executions/{execution_id}/cancel"): "scoped",
    ("POST", "/v1/executions/{execution_id}/retry"): "scoped",
    ("POST", "/v1/workflows/{workflow_id}/activate"): "scoped",
    ("POST", "/v1/workflows/{workflow_id}/deactivate"): "scoped",
    ("POST", "/v1/workflows/{workflow_id}/webhook-secret/rotate"): "scoped",
    ("POST", "/v1/projects"): "org-only",
    ("GET", "/v1/projects"): "scoped",
    ("GET", "/v1/projects/{project_id}"): "scoped",
    ("PATCH", "/v1/projects/{project_id}"): "scoped",
    ("POST", "/v1/workflows/{workflow_id}/move"): "scoped",
    ("POST", "/v1/workflows/{workflow_id}/shares"): "scoped",
    ("GET", "/v1/workflows/{workflow_id}/shares"): "scoped",
    ("DELETE", "/v1/workflows/{workflow_id}/shares/{project_id}"): "scoped",
    ("GET", "/v1/workflows/{workflow_id}/versions"): "scoped",
    ("GET", "/v1/workflows/{workflow_id}/versions/{version}"): "scoped",
    ("POST", "/v1/query/{collection}/aggregate"): "scoped",
    ("GET", "/v1/workflows/{workflow_id}/history"): "scoped",
    ("GET", "/v1/audit/events"): "scoped",
    ("GET", "/v1/audit/verify"): "org-only",
    ("GET", "/v1/executions"): "scoped",
    ("GET", "/v1/executions/{execution_id}"): "scoped",
    ("GET", "/v1/dashboards/summary"): "scoped",
    ("GET", "/v1/stream"): "stream",
    ("POST", "/v1/executions/{execution_id}/pin"): "scoped",
    ("DELETE", "/v1/executions/{execution_id}/pin"): "scoped",
    ("GET", "/v1/workflows/{workflow_id}/export"): "scoped",
    ("POST", "/v1/import"): "scoped",
    ("POST", "/v1/import/n8n"): "scoped",
    ("POST", "/v1/templates/{template_id}/instantiate"): "scoped",
    ("GET", "/v1/templates"): "catalogue",
    ("GET", "/v1/templates/{template_id}"): "catalogue",
    ("POST", "/v1/templates"): "org-only",
    ("POST", "/v1/templates/{template_id}/unpublish"): "org-only",
    ("POST", "/v1/data-subjects/{subject}/erase"): "org-only",
    # Credentials are the organisation's: a project's key sees their metadata (its
    # nodes may use them) and manages none.
    ("GET", "/v1/credentials"): "catalogue",
    ("GET", "/v1/credentials/{credential_id}"): "catalogue",
    ("POST", "/v1/credentials"): "org-only",
    ("PATCH", "/v1/credentials/{credential_id}"): "org-only",
    ("DELETE", "/v1/credentials/{credential_id}"): "org-only",
    # The platform's: platform_admin keys only (a tenant's key of any kind is 403).
    ("POST", "/v1/admin/organisations"): "org-only",
    ("GET", "/v1/admin/organisations"): "org-only",
    ("GET", "/v1/admin/organisations/{org_id}"): "org-only",
    ("PATCH", "/v1/admin/organisations/{org_id}"): "org-only",
    ("POST", "/v1/admin/organisations/{org_id}/suspend"): "org-only",
    ("POST", "/v1/admin/organisations/{org_id}/reinstate"): "org-only",
    ("PUT", "/v1/admin/organisations/{org_id}/limits"): "org-only",
    ("GET", "/v1/keys"): "org-only",
    ("POST", "/v1/keys"): "org-only",
    ("DELETE", "/v1/keys/{key_id}"): "org-only",
    # The console's API (not in the OpenAPI document).
    ("GET", "/ui/api/session"): "scoped",
    ("GET", "/ui/api/workflows/{workflow_id}/triggers"): "scoped",
    # The deployment's followers, queue and checks: no tenant's data, the same for every key.
    ("GET", "/ui/api/system"): "public",
}


def _console_routes() -> set[tuple[str, str]]:
    return {
        (method, route.path)  # type: ignore[attr-defined]
        for route in console_api.routes
        for method in route.methods  # type: ignore[attr-defined]
        if method != "HEAD"
    }


def test_every_endpoint_has_a_project_scope_decision(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    operations = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    operations |= _console_routes()
    undecided = operations - set(ENDPOINTS)
    stale = set(ENDPOINTS) - operations
    assert not undecided, f"decide what a project-scoped key gets from: {sorted(undecided)}"
    assert not stale, f"decisions for endpoints that no longer exist: {sorted(stale)}"


def _key(target: PgTarget, org: str, role: str, project: uuid.UUID | None) -> dict[str, str]:
    async def create() -> str:
        engine = create_engine(target, pool_size=1)
        try:
            _, plaintext = await ApiKeyStore(engine).create(
                org, Role(role), "test", project_id=project
            )
            return plaintext
        finally:
            await engine.dispose()

    return {"Authorization": f"Bearer {asyncio.run(create())}"}


@dataclass
class World:
    org: str
    owner: dict[str, str]
    key_a: dict[str, str]  # owner role, confined to project A
    project_a: str
    project_b: str
    workflow_a: str
    workflow_b: str
    workflow_default: str
    execution_a: str
    execution_b: str
    execution_default: str
    first_position: int
    last_position: int

    @property
    def default_project(self) -> str:
        return str(default_project_id(self.org))

    def foreign(self) -> list[str]:
        """What no answer to A's key may mention."""
        return [
            self.project_b,
            self.default_project,
            self.workflow_b,
            self.workflow_default,
            self.execution_b,
            self.execution_default,
            f"secret-{self.org}-b",
            f"secret-{self.org}-default",
        ]


def _created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    return response.json()  # type: ignore[no-any-return]


def _consistent(client: httpx.Client, world_owner: dict[str, str], position: int) -> None:
    """Wait (the API's own bounded wait) until both views hold ``position``."""
    headers = {**world_owner, "X-Min-Position": str(position)}
    for path in ("/v1/workflows", "/v1/executions"):
        for _ in range(20):
            if client.get(path, headers=headers).status_code == 200:
                break


@pytest.fixture
def world(
    client: httpx.Client, org: str, db_target: PgTarget, make_key: Callable[[str, str], str]
) -> Iterator[World]:
    owner = {"Authorization": f"Bearer {make_key(org, 'owner')}"}
    project_a = _created(client.post("/v1/projects", json={"name": "A"}, headers=owner))["id"]
    project_b = _created(client.post("/v1/projects", json={"name": "B"}, headers=owner))["id"]

    def workflow(name: str, project: str | None) -> dict[str, Any]:
        body = workflow_body(name, tags=[name])
        if project is not None:
            body["project_id"] = project
        return _created(client.post("/v1/workflows", json=body, headers=owner))

    def run(workflow_id: str) -> dict[str, Any]:
        path = f"/v1/workflows/{workflow_id}/executions"
        return _created(client.post(path, json={"input": {"n": 1}}, headers=owner))

    created_a = workflow(f"visible-{org}-a", project_a)
    created_b = workflow(f"secret-{org}-b", project_b)
    created_default = workflow(f"secret-{org}-default", None)
    runs = [run(created["id"]) for created in (created_a, created_b, created_default)]
    # The last write of the setup is A's: a stream that reached it has seen all of it.
    last = client.patch(
        f"/v1/workflows/{created_a['id']}",
        json={"description": "last"},
        headers={**owner, "If-Match": '"1"'},
    )
    assert last.status_code == 200, last.text
    _consistent(client, owner, last.json()["position"])
    yield World(
        org=org,
        owner=owner,
        key_a=_key(db_target, org, "owner", uuid.UUID(project_a)),
        project_a=project_a,
        project_b=project_b,
        workflow_a=created_a["id"],
        workflow_b=created_b["id"],
        workflow_default=created_default["id"],
        execution_a=runs[0]["execution_id"],
        execution_b=runs[1]["execution_id"],
        execution_default=runs[2]["execution_id"],
        first_position=created_a["position"] - 1,
        last_position=last.json()["position"],
    )


def _no_leak(world: World, response: httpx.Response, what: str) -> None:
    """Nothing of another project in the answer, beyond what the request itself named."""
    asked = str(response.request.url) + response.request.content.decode()
    for secret in world.foreign():
        if secret in asked:
            continue
        assert secret not in response.text, f"{what} leaks {secret}: {response.text[:500]}"


def _tomorrow() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).isoformat()


def _reads(world: World, own: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, request kwargs) for every scoped read, with A's ids or B's."""
    wf = world.workflow_a if own else world.workflow_b
    ex = world.execution_a if own else world.execution_b
    project = world.project_a if own else world.project_b
    return [
        ("GET", f"/v1/workflows/{wf}", {}),
        ("GET", f"/v1/workflows/{wf}", {"params": {"version": 1}}),
        ("GET", f"/v1/workflows/{wf}", {"params": {"as_of": _tomorrow()}}),
        ("GET", f"/v1/workflows/{wf}/versions", {}),
        ("GET", f"/v1/workflows/{wf}/versions/1", {}),
        ("GET", f"/v1/workflows/{wf}/history", {}),
        ("GET", f"/v1/workflows/{wf}/shares", {}),
        ("GET", f"/v1/workflows/{wf}/export", {}),
        ("GET", f"/v1/executions/{ex}", {}),
        ("GET", f"/v1/projects/{project}", {}),
        ("GET", f"/ui/api/workflows/{wf}/triggers", {}),
        # Lists and figures: another project's ids filter to nothing.
        ("GET", "/v1/workflows", {"params": {"filter": json.dumps({"id": wf})}}),
        ("GET", "/v1/workflows", {"params": {"filter": json.dumps({"project_id": project})}}),
        ("GET", "/v1/executions", {"params": {"filter": json.dumps({"workflow_id": wf})}}),
        ("GET", f"/v1/workflows/{wf}/executions", {}),
        ("GET", "/v1/dashboards/summary", {"params": {"workflow_id": wf}}),
        ("GET", "/v1/audit/events", {"params": {"aggregate_id": wf}}),
    ]


def test_a_project_key_reads_its_project_and_nothing_else(
    client: httpx.Client, world: World
) -> None:
    pipeline = {"pipeline": [{"$project": {"id": 1, "name": 1, "workflow_id": 1}}]}
    lists = [
        ("POST", "/v1/query/workflows/aggregate", {"json": pipeline}),
        ("POST", "/v1/query/workflow_versions/aggregate", {"json": pipeline}),
        ("GET", "/v1/workflows", {}),
        ("GET", "/v1/workflows", {"params": {"filter": json.dumps({"deleted": False})}}),
        ("GET", "/v1/executions", {}),
        ("GET", "/v1/projects", {}),
        ("GET", "/v1/audit/events", {"params": {"after_position": world.first_position}}),
        ("GET", "/v1/dashboards/summary", {}),
        ("GET", "/ui/api/session", {}),
    ]
    for method, path, kwargs in [*_reads(world, own=True), *lists]:
        response = client.request(method, path, headers=world.key_a, **kwargs)
        assert response.status_code == 200, f"{method} {path}: {response.text}"
        _no_leak(world, response, f"{method} {path}")
    # What A's key does see is A's: its workflow, its run, its project.
    listed = client.get("/v1/workflows", headers=world.key_a).json()["items"]
    assert [item["id"] for item in listed] == [world.workflow_a]
    assert listed[0]["project_id"] == world.project_a
    runs = client.get("/v1/executions", headers=world.key_a).json()["items"]
    assert [run["id"] for run in runs] == [world.execution_a]
    projects = client.get("/v1/projects", headers=world.key_a).json()["items"]
    assert [project["id"] for project in projects] == [world.project_a]
    mine = client.get("/v1/dashboards/summary", headers=world.key_a).json()
    everyone = client.get("/v1/dashboards/summary", headers=world.owner).json()
    assert (mine["totals"]["all"], everyone["totals"]["all"]) == (1, 3)
    audit = client.get(
        "/v1/audit/events",
        headers=world.key_a,
        params={"after_position": world.first_position, "limit": 500},
    ).json()["items"]
    assert audit and {entry["aggregate_id"] for entry in audit} <= {
        world.workflow_a,
        world.execution_a,
        world.project_a,
    }
    pipeline = {"pipeline": [{"$count": "n"}]}
    counted = client.post("/v1/query/workflows/aggregate", json=pipeline, headers=world.key_a)
    assert counted.json()["results"] == [{"n": 1}]
    session = client.get("/ui/api/session", headers=world.key_a).json()
    assert session["project_id"] == world.project_a


def test_another_projects_ids_are_not_found_for_a_project_key(
    client: httpx.Client, world: World
) -> None:
    for method, path, kwargs in _reads(world, own=False):
        response = client.request(method, path, headers=world.key_a, **kwargs)
        assert response.status_code in (200, 404), f"{method} {path}: {response.text}"
        if response.status_code == 200:  # lists and figures: empty, never B's
            body = response.json()
            assert body.get("items", []) == [] and body.get("results", []) == []
            if "totals" in body:
                assert body["totals"]["all"] == 0
        _no_leak(world, response, f"{method} {path}")


def test_a_project_key_acts_on_nothing_outside_its_project(
    client: httpx.Client, world: World
) -> None:
    wf, ex = world.workflow_b, world.execution_b
    if_match = {**world.key_a, "If-Match": '"1"'}
    commands = [
        ("PATCH", f"/v1/workflows/{wf}", {"json": {"name": "taken"}}),
        ("DELETE", f"/v1/workflows/{wf}", {}),
        ("POST", f"/v1/workflows/{wf}/revert", {"json": {"to_version": 1}}),
        ("POST", f"/v1/workflows/{wf}/executions", {"json": {}}),
        ("POST", f"/v1/workflows/{wf}/activate", {}),
        ("POST", f"/v1/workflows/{wf}/deactivate", {}),
        ("POST", f"/v1/workflows/{wf}/webhook-secret/rotate", {"json": {"node_id": "start"}}),
        ("POST", f"/v1/workflows/{wf}/move", {"json": {"project_id": world.project_a}}),
        (
            "POST",
            f"/v1/workflows/{wf}/shares",
            {"json": {"project_id": world.project_a, "role": "editor"}},
        ),
        ("DELETE", f"/v1/workflows/{wf}/shares/{world.project_a}", {}),
        ("POST", f"/v1/executions/{ex}/cancel", {}),
        ("POST", f"/v1/executions/{ex}/retry", {}),
        ("POST", f"/v1/executions/{ex}/pin", {}),
        ("DELETE", f"/v1/executions/{ex}/pin", {}),
        ("PATCH", f"/v1/projects/{world.project_b}", {"json": {"name": "taken"}}),
        ("POST", "/v1/workflows", {"json": workflow_body(project_id=world.project_b)}),
    ]
    for method, path, kwargs in commands:
        response = client.request(method, path, headers=if_match, **kwargs)
        assert response.status_code == 404, f"{method} {path}: {response.text}"
        _no_leak(world, response, f"{method} {path}")
    org_only = [
        ("POST", "/v1/projects", {"name": "mine"}),
        ("GET", "/v1/audit/verify", None),
        ("POST", "/v1/templates", {"workflow_id": world.workflow_a, "visibility": "public"}),
        ("POST", f"/v1/templates/{uuid.uuid4()}/unpublish", None),
        ("POST", "/v1/data-subjects/someone/erase", None),
        ("POST", "/v1/credentials", {"name": "c", "type": "bearer", "secret": {"token": "t"}}),
        ("PATCH", f"/v1/credentials/{uuid.uuid4()}", {"name": "c"}),
        ("DELETE", f"/v1/credentials/{uuid.uuid4()}", None),
        ("GET", "/v1/keys", None),
        ("GET", "/v1/admin/organisations", None),
        ("POST", "/v1/keys", {"role": "owner"}),
        ("DELETE", f"/v1/keys/{uuid.uuid4()}", None),
    ]
    for method, path, body in org_only:
        response = client.request(method, path, headers=world.key_a, json=body)
        assert response.status_code == 403, f"{method} {path}: {response.text}"
    # Nothing of B's changed.
    b = client.get(f"/v1/workflows/{wf}", headers=world.owner).json()
    assert (b["version"], b["project_id"], b["shares"]) == (1, world.project_b, {})


def test_a_project_key_creates_in_its_project(client: httpx.Client, world: World) -> None:
    created = client.post("/v1/workflows", json=workflow_body("mine"), headers=world.key_a)
    assert created.status_code == 201, created.text
    seen = client.get(
        f"/v1/workflows/{created.json()['id']}",
        headers={**world.key_a, "X-Min-Position": str(created.json()["position"])},
    )
    assert seen.json()["project_id"] == world.project_a


def test_the_stream_of_a_project_key_carries_its_projects_events_only(
    client: httpx.Client, world: World
) -> None:
    seen: list[dict[str, Any]] = []
    params = {"after": world.first_position}
    with client.stream("GET", "/v1/stream", headers=world.key_a, params=params) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[len("data: ") :]))
                if seen[-1]["position"] >= world.last_position:
                    break
    assert seen[-1]["position"] == world.last_position  # the setup's last write: A's
    assert {event["aggregate_id"] for event in seen} <= {
        world.workflow_a,
        world.execution_a,
        world.project_a,
    }
    assert world.execution_a in {event["aggregate_id"] for event in seen}


def test_moves_and_shares_are_recorded_and_change_what_a_project_sees(
    client: httpx.Client, world: World
) -> None:
    wf = world.workflow_b

    def owner_says(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        version = client.get(f"/v1/workflows/{wf}", headers=world.owner).json()["version"]
        response = client.request(
            method, path, headers={**world.owner, "If-Match": f'"{version}"'}, **kwargs
        )
        assert response.status_code == 200, response.text
        _consistent(client, world.owner, response.json()["position"])
        return response.json()  # type: ignore[no-any-return]

    def a_reads() -> int:
        return client.get(f"/v1/workflows/{wf}", headers=world.key_a).status_code

    def a_edits() -> int:
        version = client.get(f"/v1/workflows/{wf}", headers=world.owner).json()["version"]
        edited = client.patch(
            f"/v1/workflows/{wf}",
            json={"description": f"by A at {version}"},
            headers={**world.key_a, "If-Match": f'"{version}"'},
        )
        if edited.status_code == 200:
            _consistent(client, world.owner, edited.json()["position"])
        return edited.status_code

    shares = f"/v1/workflows/{wf}/shares"
    owner_says("POST", shares, json={"project_id": world.project_a, "role": "viewer"})
    assert (a_reads(), a_edits()) == (200, 403)
    listed = client.get(shares, headers=world.key_a).json()
    assert listed["items"] == [{"project_id": world.project_a, "role": "viewer"}]
    owner_says("POST", shares, json={"project_id": world.project_a, "role": "editor"})
    assert a_edits() == 200
    # A grantee may not pass the workflow on, nor move it.
    for path, body in [
        (shares, {"project_id": world.default_project, "role": "viewer"}),
        (f"/v1/workflows/{wf}/move", {"project_id": world.project_a}),
    ]:
        version = client.get(f"/v1/workflows/{wf}", headers=world.owner).json()["version"]
        refused = client.post(path, json=body, headers={**world.key_a, "If-Match": f'"{version}"'})
        assert refused.status_code == 403, refused.text
    owner_says("DELETE", f"{shares}/{world.project_a}")
    assert a_reads() == 404
    moved = owner_says("POST", f"/v1/workflows/{wf}/move", json={"project_id": world.project_a})
    assert a_reads() == 200
    assert (
        client.get(f"/v1/workflows/{wf}", headers=world.key_a).json()["version"]
        == (moved["version"])
    )
    history = client.get(f"/v1/workflows/{wf}/history", headers=world.owner).json()["items"]
    tenancy = [(entry["type"], entry.get("share") or entry.get("move")) for entry in history]
    assert [entry for entry in tenancy if entry[1] is not None] == [
        ("Workflow.Shared", {"project_id": world.project_a, "role": "viewer"}),
        ("Workflow.Shared", {"project_id": world.project_a, "role": "editor"}),
        ("Workflow.Unshared", {"project_id": world.project_a, "role": None}),
        (
            "Workflow.Moved",
            {"from_project_id": world.project_b, "to_project_id": world.project_a},
        ),
    ]
    audit = client.get(
        "/v1/audit/events",
        headers=world.owner,
        params={"aggregate_id": wf, "type": "Workflow.Moved"},
    ).json()["items"]
    assert [entry["actor"].startswith("apikey:") for entry in audit] == [True]


def test_projects_are_created_renamed_and_archived(client: httpx.Client, world: World) -> None:
    default = world.default_project
    listed = client.get("/v1/projects", headers=world.owner).json()["items"]
    assert [p["id"] for p in listed] == [default, world.project_a, world.project_b]
    assert listed[0] | {"default": True, "version": 0} == listed[0]
    renamed = client.patch(
        f"/v1/projects/{default}",
        json={"name": "Main"},
        headers={**world.owner, "If-Match": '"0"'},
    )
    assert renamed.status_code == 200, renamed.text
    stale = client.patch(
        f"/v1/projects/{default}",
        json={"name": "Other"},
        headers={**world.owner, "If-Match": '"0"'},
    )
    assert stale.status_code == 409
    kept = client.patch(
        f"/v1/projects/{default}",
        json={"archived": True},
        headers={**world.owner, "If-Match": f'"{renamed.json()["version"]}"'},
    )
    assert kept.status_code == 409  # the default project stays
    archived = client.patch(
        f"/v1/projects/{world.project_b}",
        json={"archived": True},
        headers={**world.owner, "If-Match": '"1"'},
    )
    assert archived.status_code == 200, archived.text
    refused = client.post(
        "/v1/workflows", json=workflow_body(project_id=world.project_b), headers=world.owner
    )
    assert refused.status_code == 409, refused.text
    main = client.get(f"/v1/projects/{default}", headers=world.owner).json()
    assert (main["name"], main["default"], main["archived"]) == ("Main", True, False)
    assert client.get(f"/v1/projects/{world.project_b}", headers=world.owner).json()["archived"]
    page = client.get("/v1/projects", headers=world.owner, params={"limit": 2}).json()
    rest = client.get(
        "/v1/projects", headers=world.owner, params={"limit": 2, "cursor": page["next_cursor"]}
    ).json()
    assert [p["id"] for p in page["items"] + rest["items"]] == [
        default,
        world.project_a,
        world.project_b,
    ]
    assert rest["next_cursor"] is None


def test_a_keyed_project_creation_is_made_once(client: httpx.Client, world: World) -> None:
    keyed = {**world.owner, "Idempotency-Key": f"project-{uuid.uuid4()}"}
    first = client.post("/v1/projects", json={"name": "Once"}, headers=keyed)
    again = client.post("/v1/projects", json={"name": "Once"}, headers=keyed)
    other = client.post("/v1/projects", json={"name": "Twice"}, headers=keyed)
    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 422)
    assert first.json()["id"] == again.json()["id"]
    blank = client.post("/v1/projects", json={"name": "  "}, headers=world.owner)
    assert blank.status_code == 422


def test_a_webhook_route_held_in_another_project_is_taken_without_naming_its_workflow(
    client: httpx.Client, world: World
) -> None:
    path = f"hooks-{uuid.uuid4().hex[:8]}"
    b = _created(
        client.post(
            "/v1/workflows",
            json={**webhook_body("b-hook", path=path), "project_id": world.project_b},
            headers=world.owner,
        )
    )
    on = client.post(
        f"/v1/workflows/{b['id']}/activate", headers={**world.owner, "If-Match": '"1"'}
    )
    assert on.status_code == 200, on.text
    a = _created(client.post("/v1/workflows", json=webhook_body(path=path), headers=world.key_a))
    taken = client.post(
        f"/v1/workflows/{a['id']}/activate", headers={**world.key_a, "If-Match": '"1"'}
    )
    assert taken.status_code == 409, taken.text
    assert taken.json()["path"] == path and b["id"] not in taken.text
    named = client.post(
        f"/v1/workflows/{a['id']}/activate", headers={**world.owner, "If-Match": '"1"'}
    )
    assert named.json()["conflicting_workflow_id"] == b["id"]  # the organisation sees it


def test_a_project_key_replaying_anothers_idempotency_key_gets_no_answer(
    client: httpx.Client, world: World
) -> None:
    key = f"replay-{uuid.uuid4()}"
    run = f"/v1/workflows/{world.workflow_b}/executions"
    first = client.post(run, json={}, headers={**world.owner, "Idempotency-Key": key})
    assert first.status_code == 200, first.text
    replayed = client.post(run, json={}, headers={**world.key_a, "Idempotency-Key": key})
    assert replayed.status_code == 404, replayed.text
    retry = f"/v1/executions/{world.execution_b}/retry"
    refused = client.post(retry, headers={**world.key_a, "Idempotency-Key": key})
    assert refused.status_code == 404, refused.text
    edit = f"/v1/workflows/{world.workflow_b}"
    edited = client.patch(
        edit,
        json={"description": "x"},
        headers={**world.owner, "Idempotency-Key": key + "e", "If-Match": '"1"'},
    )
    assert edited.status_code == 200, edited.text
    again = client.patch(
        edit,
        json={"description": "x"},
        headers={**world.key_a, "Idempotency-Key": key + "e", "If-Match": '"1"'},
    )
    assert again.status_code == 404, again.text
    _no_leak(world, replayed, "a replayed run")
