"""Schedule triggers over real HTTP: validation, activation, and the whole service firing one."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from infrastructure.auth import ApiKeyStore, Role
from infrastructure.database import PgTarget, create_engine
from infrastructure.settings import Settings
from reporunner.wiring import create_app
from tests.helpers import noop, scratch_database, serving, workflow_body


def schedule_body(**parameters: Any) -> dict[str, Any]:
    return workflow_body(
        "scheduled",
        nodes=[{"id": "tick", "type": "schedule_trigger", "parameters": parameters}, noop("a")],
        connections=[{"from": "tick", "to": "a"}],
    )


@pytest.mark.parametrize(
    ("parameters", "loc", "words"),
    [
        ({"cron": "0 9 * *"}, "nodes[0].parameters", "five fields"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "nodes[0].parameters", "time zone"),
        ({"interval_s": 0}, "nodes[0].parameters.interval_s", "greater than or equal to 1"),
        ({"interval_s": 60, "overlap": "queue"}, "nodes[0].parameters.overlap", "buffer_one"),
        ({"cron": "0 9 * * *", "interval_s": 60}, "nodes[0].parameters", "exactly one"),
    ],
)
def test_a_bad_schedule_is_a_422_naming_the_parameter(
    client: httpx.Client, owner: dict[str, str], parameters: dict[str, Any], loc: str, words: str
) -> None:
    response = client.post("/v1/workflows", json=schedule_body(**parameters), headers=owner)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    errors = response.json()["errors"]
    assert any(e["loc"] == loc and words in e["msg"] for e in errors), errors


def test_a_schedule_trigger_activates_a_workflow(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    # Once a year: nothing fires while the suite runs.
    body = schedule_body(cron="0 0 1 1 *", timezone="America/New_York", catch_up="run_latest")
    created = client.post("/v1/workflows", json=body, headers=owner)
    assert created.status_code == 201, created.text
    workflow_id = created.json()["id"]
    activated = client.post(
        f"/v1/workflows/{workflow_id}/activate", headers={**owner, "If-Match": '"1"'}
    )
    assert activated.status_code == 200, activated.text
    assert "webhook_secrets" not in activated.json()
    deactivated = client.post(
        f"/v1/workflows/{workflow_id}/deactivate", headers={**owner, "If-Match": '"1"'}
    )
    assert deactivated.status_code == 200, deactivated.text


# -- the whole service ------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(server_target: PgTarget, app_settings: Settings) -> Iterator[tuple[str, PgTarget]]:
    """Every role, as ``serve`` runs them, on a database of its own."""
    settings = app_settings.model_copy(
        update={"scheduler_tick_s": 0.1, "projection_poll_s": 0.1, "db_pool_size": 3}
    )
    with (
        scratch_database(server_target, "reporunner_schedules") as target,
        serving(create_app(settings, target)) as url,
    ):
        yield url, target


def _owner_key(target: PgTarget, org: str) -> str:
    async def create() -> str:
        engine = create_engine(target, pool_size=1)
        try:
            _, plaintext = await ApiKeyStore(engine).create(org, Role.OWNER, "test")
            return plaintext
        finally:
            await engine.dispose()

    return asyncio.run(create())


def _until(condition: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_the_service_fires_a_schedule_and_counts_it_under_its_trigger(
    service: tuple[str, PgTarget], org: str
) -> None:
    url, target = service
    owner = {"Authorization": f"Bearer {_owner_key(target, org)}"}
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/readyz").json()["checks"]["scheduler"] in ("leader", "standby")
        body = schedule_body(interval_s=1, overlap="skip")
        workflow_id = client.post("/v1/workflows", json=body, headers=owner).json()["id"]
        activated = client.post(
            f"/v1/workflows/{workflow_id}/activate", headers={**owner, "If-Match": '"1"'}
        )
        assert activated.status_code == 200, activated.text
        assert client.get("/readyz").json()["checks"]["scheduler"] == "leader"

        def succeeded() -> list[dict[str, Any]]:
            filter_ = json.dumps({"trigger": "schedule", "status": "succeeded"})
            page = client.get("/v1/executions", params={"filter": filter_}, headers=owner)
            assert page.status_code == 200, page.text
            return page.json()["items"]  # type: ignore[no-any-return]

        [first, *_] = _until(succeeded)
        client.post(f"/v1/workflows/{workflow_id}/deactivate", headers={**owner, "If-Match": '"1"'})
        execution = client.get(f"/v1/executions/{first['id']}", headers=owner).json()
        assert execution["trigger"] == "schedule" and execution["workflow_id"] == workflow_id
        assert execution["input"]["node_id"] == "tick"
        assert execution["input"]["scheduled_at"].endswith("Z")
        summary = client.get(
            "/v1/dashboards/summary", params={"workflow_id": workflow_id}, headers=owner
        )
        assert summary.status_code == 200, summary.text
        by_trigger = summary.json()["by_trigger"]
        assert by_trigger["schedule"] >= 1
        assert by_trigger["manual"] == by_trigger["webhook"] == by_trigger["retry"] == 0
        # Its decisions are in the organisation's log, each naming its instant.
        fired = client.get(
            "/v1/audit/events", params={"type": "Timetable.Fired"}, headers=owner
        ).json()["items"]
        assert {f["schedule"]["workflow_id"] for f in fired} == {workflow_id}
        assert first["id"] in {f["schedule"]["execution_id"] for f in fired}
