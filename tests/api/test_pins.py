"""``POST`` / ``DELETE /v1/executions/{id}/pin`` over real HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import psycopg
import pytest

from infrastructure.database import PgTarget
from tests.helpers import workflow_body


def _run(client: httpx.Client, owner: dict[str, str], mode: str = "sync") -> str:
    created = client.post("/v1/workflows", json=workflow_body(), headers=owner)
    assert created.status_code == 201, created.text
    run = client.post(
        f"/v1/workflows/{created.json()['id']}/executions",
        json={"input": {"n": 1}, "mode": mode},
        headers=owner,
    )
    assert run.status_code in (200, 202), run.text
    return str(run.json()["execution_id"])


def _topics(db_target: PgTarget, execution_id: str) -> list[str]:
    with psycopg.connect(db_target.conninfo()) as conn:
        rows = conn.execute(
            "SELECT topic FROM reporunner_events WHERE originator_id = %s "
            "ORDER BY originator_version",
            (execution_id,),
        ).fetchall()
    return [row[0].rsplit(".", 1)[-1] for row in rows]


@pytest.mark.usefixtures("live_executions_projector")
def test_pin_and_unpin_are_recorded_once_and_the_view_shows_them(
    client: httpx.Client, owner: dict[str, str], db_target: PgTarget
) -> None:
    execution_id = _run(client, owner)
    url = f"/v1/executions/{execution_id}/pin"

    pinned = client.post(url, headers=owner)
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["pinned"] is True and pinned.json()["changed"] is True
    assert pinned.json()["position"] == int(pinned.headers["x-log-position"])
    again = client.post(url, headers=owner)
    assert again.status_code == 200
    assert again.json()["changed"] is False
    assert _topics(db_target, execution_id).count("Pinned") == 1

    read = client.get(
        f"/v1/executions/{execution_id}",
        headers={**owner, "X-Min-Position": str(pinned.json()["position"])},
    )
    assert read.status_code == 200, read.text
    assert read.json()["pinned"] is True
    assert read.json()["pinned_by"].startswith("apikey:")

    unpinned = client.delete(url, headers=owner)
    assert unpinned.status_code == 200, unpinned.text
    assert unpinned.json()["pinned"] is False and unpinned.json()["changed"] is True
    assert client.delete(url, headers=owner).json()["changed"] is False
    assert _topics(db_target, execution_id)[-2:] == ["Pinned", "Unpinned"]
    read = client.get(
        f"/v1/executions/{execution_id}",
        headers={**owner, "X-Min-Position": str(unpinned.json()["position"])},
    )
    assert read.json()["pinned"] is False


def test_only_finished_executions_of_ones_own_organisation_are_pinned(
    client: httpx.Client,
    owner: dict[str, str],
    org: str,
    make_key: Callable[[str, str], str],
) -> None:
    queued = _run(client, owner, mode="async")  # no worker here: it stays queued
    refused = client.post(f"/v1/executions/{queued}/pin", headers=owner)
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"].endswith("execution-not-finished")
    assert refused.json()["status_now"] == "queued"

    finished = _run(client, owner)
    stranger = {"Authorization": f"Bearer {make_key(f'other-{uuid.uuid4().hex[:8]}', 'owner')}"}
    assert client.post(f"/v1/executions/{finished}/pin", headers=stranger).status_code == 404
    missing = client.post(f"/v1/executions/{uuid.uuid4()}/pin", headers=owner)
    assert missing.status_code == 404
    assert client.post("/v1/executions/not-a-uuid/pin", headers=owner).status_code == 422

    viewer = {"Authorization": f"Bearer {make_key(org, 'viewer')}"}
    assert client.post(f"/v1/executions/{finished}/pin", headers=viewer).status_code == 403
    assert client.delete(f"/v1/executions/{finished}/pin", headers=viewer).status_code == 403
    editor = {"Authorization": f"Bearer {make_key(org, 'editor')}"}
    assert client.post(f"/v1/executions/{finished}/pin", headers=editor).status_code == 200
