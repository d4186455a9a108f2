"""Values in the log from before the value contract: every read of them is still 200.

The doors refuse these values now, so the tests plant the events directly,
through the aggregates' ``@event`` methods (which apply without validating,
as a replay does): exactly what an older release wrote.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import httpx
import pytest

from commands import WorkflowApplication
from domain.execution import Execution
from domain.meta import EventMeta
from domain.workflow import Workflow
from tests.helpers import noop, trigger, workflow_body

pytestmark = pytest.mark.usefixtures("live_projector", "live_executions_projector")

# Each one accepted by the first release; none stalls a projector (those are
# the dead letters' business), but each failed a read or a query.
OLD_POSITION = [1e20, 1e308]  # jsonb prints them as integer numerals
OLD_FIELDS = {"nan": math.nan, "u64": 2**64 - 1, "zero": -0.0, "tiny": 1e-320, "big": 1e300}


def _plant_workflow(app: WorkflowApplication, org: str) -> tuple[str, int]:
    body = workflow_body("old")
    body["nodes"] = [
        trigger(),
        {**noop("a"), "position": OLD_POSITION},
        {"id": "s", "type": "set", "parameters": {"fields": OLD_FIELDS}},
    ]
    body["connections"] = [{"from": "start", "to": "a"}, {"from": "a", "to": "s"}]
    meta = EventMeta(org_id=org, actor="apikey:old", correlation_id="old-release")
    # As the first release recorded it (before origins and projects: none of either).
    workflow = Workflow(id=uuid.uuid4(), **body, meta=meta.as_dict(), origin=None, project_id=None)
    position = app.save(workflow)[-1].notification.id
    return str(workflow.id), position


def old_execution(org: str, input: dict[str, Any]) -> Execution:
    """An execution queued as the first release recorded it, ``input`` unchecked (unsaved)."""
    meta = EventMeta(org_id=org, actor="apikey:old", correlation_id="old-release")
    return Execution(
        id=uuid.uuid4(),
        workflow_id=uuid.uuid4(),
        workflow_version=1,
        workflow_revision=None,
        trigger="manual",
        retry_of=None,
        reused_nodes=[],
        mode="async",
        attempt=1,
        not_before=None,
        input=input,
        meta=meta.as_dict(),
    )


def _fresh(headers: dict[str, str], position: int) -> dict[str, str]:
    return {**headers, "X-Min-Position": str(position)}


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def test_a_workflow_with_old_numbers_reads_back_everywhere(
    client: httpx.Client, owner: dict[str, str], workflow_app: WorkflowApplication, org: str
) -> None:
    workflow_id, position = _plant_workflow(workflow_app, org)
    headers = _fresh(owner, position)
    document = _ok(client.get(f"/v1/workflows/{workflow_id}", headers=headers))
    assert document["nodes"][1]["position"] == OLD_POSITION
    fields = document["nodes"][2]["parameters"]["fields"]
    assert fields == {"nan": None, "u64": 2**64 - 1, "zero": 0, "tiny": 1e-320, "big": 1e300}
    listed = _ok(client.get("/v1/workflows", headers=headers))["items"]
    assert [item["id"] for item in listed] == [workflow_id]
    versions = _ok(client.get(f"/v1/workflows/{workflow_id}/versions", headers=headers))
    assert versions["items"][0]["nodes"][1]["position"] == OLD_POSITION
    _ok(client.get(f"/v1/workflows/{workflow_id}/versions/1", headers=headers))
    then = _ok(client.get(f"/v1/workflows/{workflow_id}", params={"version": 1}, headers=owner))
    assert then["nodes"][1]["position"] == OLD_POSITION
    assert then["nodes"][2]["parameters"]["fields"]["nan"] is None  # orjson writes NaN as null
    history = _ok(client.get(f"/v1/workflows/{workflow_id}/history", headers=owner))
    assert history["items"][0]["type"] == "Workflow.Created"
    pipeline = [
        {"$unwind": "$nodes"},
        {"$project": {"_id": 0, "p": "$nodes.position", "f": "$nodes.parameters.fields"}},
    ]
    results = _ok(
        client.post("/v1/query/workflows/aggregate", json={"pipeline": pipeline}, headers=headers)
    )["results"]
    assert {"p": OLD_POSITION} in results


def test_an_old_definition_must_lose_its_values_before_it_changes_again(
    client: httpx.Client, owner: dict[str, str], workflow_app: WorkflowApplication, org: str
) -> None:
    workflow_id, _ = _plant_workflow(workflow_app, org)
    url = f"/v1/workflows/{workflow_id}"
    renamed = client.patch(url, json={"name": "new"}, headers={**owner, "If-Match": '"1"'})
    assert renamed.status_code == 422, renamed.text
    locs = {error["loc"] for error in renamed.json()["errors"]}
    fields = "nodes[2].parameters.fields"
    assert locs == {
        "nodes[1].position[0]",
        "nodes[1].position[1]",
        *(f"{fields}.{name}" for name in ("nan", "u64", "big")),
    }
    fixed = client.patch(
        url,
        json={"nodes": [trigger(), noop("a")], "connections": [{"from": "start", "to": "a"}]},
        headers={**owner, "If-Match": '"1"'},
    )
    assert fixed.status_code == 200, fixed.text
    back = client.post(
        f"{url}/revert", json={"to_version": 1}, headers={**owner, "If-Match": '"2"'}
    )
    assert back.status_code == 422, back.text
    assert "nodes[1].position[0]" in {error["loc"] for error in back.json()["errors"]}


def test_an_execution_with_old_input_reads_back_and_the_audit_log_answers_everyone(
    client: httpx.Client,
    owner: dict[str, str],
    workflow_app: WorkflowApplication,
    org: str,
    make_key: Any,
) -> None:
    # A NUL and a NaN: Python's json wrote them into the log as \u0000 and NaN,
    # which jsonb refuses; the audit query used to cast every event to jsonb.
    execution = old_execution(org, {"s": "a\x00b", "n": math.nan, "big": 1e20})
    position = workflow_app.save(execution)[-1].notification.id
    document = _ok(client.get(f"/v1/executions/{execution.id}", headers=_fresh(owner, position)))
    assert document["input"] == {"s": "a\ufffdb", "n": None, "big": 1e20}
    events = _ok(client.get("/v1/audit/events", headers=owner))["items"]
    assert [(e["aggregate_id"], e["type"]) for e in events] == [
        (str(execution.id), "Execution.Queued")
    ]
    by_actor = _ok(client.get("/v1/audit/events", params={"actor": "apikey:old"}, headers=owner))
    assert len(by_actor["items"]) == 1
    elsewhere = {"Authorization": f"Bearer {make_key(f'other-{uuid.uuid4().hex[:8]}', 'owner')}"}
    assert _ok(client.get("/v1/audit/events", headers=elsewhere))["items"] == []
