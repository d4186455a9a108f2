"""An event nobody can apply, planted in the log: nobody else stops for it.

The whole service runs (write and read APIs, projections, relay, audit chain,
workflow-runs recorder) on a database of this module's own, with Redis. The
events are planted straight into the log, as the write side would refuse
them (an integer beyond 64 bits, which orjson cannot encode into a view; a
state that is not JSON at all).

Tests run in file order: the last one "fixes" the projection (a test double
standing in for the code change) and so must come after those that compare
views with a rebuild by the real projection.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
import redis

from commands import WorkflowApplication
from domain.execution import Execution
from domain.meta import EventMeta
from domain.workflow import Workflow
from infrastructure.auth import ApiKeyStore, Role
from infrastructure.bus import connect as connect_redis
from infrastructure.bus import events_stream
from infrastructure.database import PgTarget, create_engine
from infrastructure.eventstore import EVENTS_TABLE
from infrastructure.settings import Settings
from projections.audit_chain import chain_status
from projections.dead_letters import DeadLetter, list_letters
from projections.rebuild import rebuild, verify
from projections.relay import RELAY_NAME
from projections.runner import Projector
from projections.workflows import WorkflowsProjection
from reporunner.wiring import create_app, create_workflow_application
from tests.helpers import scratch_database, serving, workflow_body

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[2]
BIG = 123456789012345678901234567890  # JSON allows it; orjson (so a view) does not
PLANTED = "PLANTED-VALUE"


# -- the service ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db_target(server_target: PgTarget) -> Iterator[PgTarget]:
    """A database of this module's own: its log holds events no view can apply."""
    with scratch_database(server_target, "reporunner_test_dead") as target:
        yield target


@pytest.fixture(scope="module")
def service_settings(app_settings: Settings) -> Settings:
    try:
        with redis.Redis.from_url(REDIS_URL) as client:
            client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    return app_settings.model_copy(
        update={
            "redis_url": REDIS_URL,
            # Streams of this module's own: its log is its own.
            "bus_prefix": f"{app_settings.redis_key_prefix}dead-letters:bus",
            "cache_ttl_s": 0,
            "projection_poll_s": 0.1,
            "follower_retry_attempts": 2,
            "min_position_wait_s": 10,
            # A small footprint: the PostgreSQL server is shared.
            "db_pool_size": 2,
            "db_max_overflow": 2,
        }
    )


@pytest.fixture(scope="module")
def api(db_target: PgTarget, service_settings: Settings) -> Iterator[str]:
    """Every role of the service, live, as ``serve`` runs it."""
    with serving(create_app(service_settings, db_target)) as url:
        yield url


@pytest.fixture(scope="module")
def workflow_app(db_target: PgTarget, app_settings: Settings) -> Iterator[WorkflowApplication]:
    app = create_workflow_application(db_target, app_settings)
    yield app
    app.close()


@pytest.fixture
def client(api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=30) as client:
        yield client


def _key(db_target: PgTarget, org_id: str) -> dict[str, str]:
    async def create() -> str:
        engine = create_engine(db_target, pool_size=1)
        try:
            _, plaintext = await ApiKeyStore(engine).create(org_id, Role.OWNER, "test")
            return plaintext
        finally:
            await engine.dispose()

    return {"Authorization": f"Bearer {asyncio.run(create())}"}


@pytest.fixture
def orgs(db_target: PgTarget) -> tuple[str, dict[str, str], str, dict[str, str]]:
    """Organisation X (whose event is planted) and Y (another one), with owner keys."""
    x, y = f"org-x-{uuid.uuid4().hex[:8]}", f"org-y-{uuid.uuid4().hex[:8]}"
    return x, _key(db_target, x), y, _key(db_target, y)


# -- planting ---------------------------------------------------------------------------


def _plant(db_target: PgTarget, app: WorkflowApplication, event: Any, state: bytes) -> int:
    """Append one event row as eventsourcing would, with ``state`` as given; its position."""
    stored = app.mapper.to_stored_event(event)
    with psycopg.connect(db_target.conninfo()) as conn, conn.transaction():
        conn.execute(f"LOCK TABLE {EVENTS_TABLE} IN EXCLUSIVE MODE")  # as every writer does
        row = conn.execute(
            f"INSERT INTO {EVENTS_TABLE} (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s) RETURNING notification_id",
            (stored.originator_id, stored.originator_version, stored.topic, state),
        ).fetchone()
        conn.execute(f"NOTIFY {EVENTS_TABLE}")
    assert row is not None
    return int(row[0])


def _with_big_int(app: WorkflowApplication, event: Any) -> bytes:
    state = app.mapper.to_stored_event(event).state
    planted = state.replace(json.dumps(PLANTED).encode(), str(BIG).encode())
    assert planted != state and json.loads(planted)  # still JSON, holding BIG
    return planted


def _meta(org_id: str) -> EventMeta:
    return EventMeta(org_id=org_id, actor="apikey:planted", correlation_id="planted")


def plant_created(db_target: PgTarget, app: WorkflowApplication, org_id: str) -> tuple[UUID, int]:
    """A new workflow whose node parameters hold BIG."""
    body = workflow_body("planted")
    body["nodes"][1] = {"id": "a", "type": "set", "parameters": {"fields": {"n": PLANTED}}}
    workflow = Workflow.create(workflow_id=uuid.uuid4(), definition=body, meta=_meta(org_id))
    [event] = workflow.collect_events()
    return workflow.id, _plant(db_target, app, event, _with_big_int(app, event))


def plant_update(
    db_target: PgTarget, app: WorkflowApplication, workflow_id: UUID, org_id: str, *, big: bool
) -> int:
    """The workflow's next event: a set node of BIG (``big``), or a new description."""
    workflow = app.repository.get(workflow_id)
    assert isinstance(workflow, Workflow)
    if big:
        node = {"id": "a", "type": "set", "parameters": {"fields": {"n": PLANTED}}}
        changes: dict[str, Any] = {"nodes": [workflow.nodes[0], node]}
    else:
        changes = {"description": "planted, but fine"}
    # Past the domain's checks, as an older release (or a hand in the database)
    # wrote it: the workflow it updates may already hold BIG.
    workflow._updated(changes=changes, meta=_meta(org_id).as_dict())
    [event] = workflow.collect_events()
    state = _with_big_int(app, event) if big else app.mapper.to_stored_event(event).state
    return _plant(db_target, app, event, state)


# -- reading back -----------------------------------------------------------------------


def _letters(db_target: PgTarget, follower: str | None = None) -> list[DeadLetter]:
    with psycopg.connect(db_target.conninfo()) as conn:
        return list_letters(conn, follower=follower, include_resolved=True)


def _wait_for(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def _tracking(db_target: PgTarget, name: str) -> int:
    with psycopg.connect(db_target.conninfo()) as conn:
        row = conn.execute(
            "SELECT position FROM projection_tracking WHERE name = %s", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


def _create(client: httpx.Client, auth: dict[str, str], name: str = "wf") -> dict[str, Any]:
    response = client.post("/v1/workflows", json=workflow_body(name), headers=auth)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _read(client: httpx.Client, auth: dict[str, str], path: str, position: int) -> httpx.Response:
    return client.get(path, headers={**auth, "X-Min-Position": str(position)})


def _cli(target: PgTarget, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": target.url(), "REPORUNNER_LOG_FORMAT": "json"}
    env.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "reporunner", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- the tests --------------------------------------------------------------------------


def test_an_unappliable_event_stops_no_other_organisation_and_is_dead_lettered(
    client: httpx.Client,
    db_target: PgTarget,
    workflow_app: WorkflowApplication,
    service_settings: Settings,
    orgs: tuple[str, dict[str, str], str, dict[str, str]],
) -> None:
    x, x_auth, y, y_auth = orgs
    planted_id, planted = plant_created(db_target, workflow_app, x)

    # Another organisation writes after it, and reads its own writes.
    created = _create(client, y_auth, "after the planted event")
    assert created["position"] > planted
    got = _read(client, y_auth, f"/v1/workflows/{created['id']}", created["position"])
    assert got.status_code == 200, got.text
    listed = _read(client, y_auth, "/v1/workflows", created["position"])
    assert [item["id"] for item in listed.json()["items"]] == [created["id"]]
    executions = _read(client, y_auth, "/v1/executions", created["position"])
    assert executions.status_code == 200, executions.text
    # So does X, the planted event's own organisation.
    own = _create(client, x_auth, "x goes on")
    assert _read(client, x_auth, f"/v1/workflows/{own['id']}", own["position"]).is_success

    # The workflows projection dead-lettered the event, after its retries.
    [letter] = _letters(db_target, "workflows")
    assert letter.position == planted and letter.org_id == x
    assert (letter.originator_id, letter.originator_version) == (planted_id, 1)
    assert letter.event == "Workflow.Created" and "64-bit" in letter.error
    assert letter.attempts == service_settings.follower_retry_attempts
    assert letter.resolved_at is None
    # A Created that cannot be applied leaves no document to mark: not found.
    assert _read(client, x_auth, f"/v1/workflows/{planted_id}", own["position"]).status_code == 404

    # The relay went past it: it published the event, BIG exactly, and what followed.
    _wait_for(lambda: _tracking(db_target, RELAY_NAME) >= own["position"], "the relay")
    bus = connect_redis(REDIS_URL)
    try:
        [(_, fields)] = bus.xrange(
            events_stream(service_settings.bus_prefix, x), f"{planted}-0", f"{planted}-0"
        )
        assert json.loads(fields["data"])["nodes"][1]["parameters"] == {"fields": {"n": BIG}}
        later = bus.xrange(
            events_stream(service_settings.bus_prefix, y),
            f"{created['position']}-0",
            f"{created['position']}-0",
        )
        assert len(later) == 1
    finally:
        bus.close()
    assert _letters(db_target, RELAY_NAME) == []
    # The audit chain hashes stored bytes: it chained the event like any other.
    _wait_for(lambda: chain_status(db_target).position >= own["position"], "the audit chain")

    # Readiness says degraded (200 by default), and the CLI lists and counts it.
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["checks"]["dead_letters"].startswith("degraded: 1 unresolved (workflows")
    listed_cli = _cli(db_target, "projections", "dead-letters", "list", "--json")
    assert listed_cli.returncode == 0, listed_cli.stderr
    [line] = [json.loads(row) for row in listed_cli.stdout.splitlines()]
    assert line["id"] == letter.id and line["event_id"] == f"{planted_id}:1"
    assert line["org_id"] == x and line["follower"] == "workflows"
    status = _cli(db_target, "projections", "status")
    assert status.returncode == 0, status.stderr
    [workflows_row] = [row for row in status.stdout.splitlines() if "workflows" in row]
    cells = [cell.strip() for cell in workflows_row.strip("│ ").split("│")]
    assert cells[0] == "workflows" and cells[-1] == "1"  # the dead letters column


def test_a_state_that_does_not_decode_is_dead_lettered_by_the_relay_which_goes_on(
    client: httpx.Client,
    db_target: PgTarget,
    workflow_app: WorkflowApplication,
    orgs: tuple[str, dict[str, str], str, dict[str, str]],
) -> None:
    _, _, _, y_auth = orgs
    workflow = Workflow.create(
        workflow_id=uuid.uuid4(), definition=workflow_body(), meta=_meta("org-broken")
    )
    [event] = workflow.collect_events()
    broken = _plant(db_target, workflow_app, event, b'{"not json')

    created = _create(client, y_auth)
    _wait_for(lambda: _tracking(db_target, RELAY_NAME) >= created["position"], "the relay")
    [letter] = [x for x in _letters(db_target, RELAY_NAME) if x.position == broken]
    assert letter.org_id is None and letter.resolved_at is None
    # The projection gives up on it in its own time (its retries back off).
    _wait_for(
        lambda: broken in [x.position for x in _letters(db_target, "workflows")],
        "the workflows projection's dead letter",
    )
    assert [x.position for x in _letters(db_target, "workflows")].count(broken) == 1
    got = _read(client, y_auth, f"/v1/workflows/{created['id']}", created["position"])
    assert got.status_code == 200
    # Chained as it is stored: the chain never decodes what it hashes.
    _wait_for(lambda: chain_status(db_target).position >= created["position"], "the chain")

    retried = _cli(db_target, "projections", "dead-letters", "retry", "--follower", RELAY_NAME)
    assert retried.returncode == 1
    assert "cannot retry" in retried.stderr


def test_an_ending_the_runs_recorder_cannot_place_is_recorded_once_what_was_missing_exists(
    client: httpx.Client,
    db_target: PgTarget,
    workflow_app: WorkflowApplication,
    orgs: tuple[str, dict[str, str], str, dict[str, str]],
) -> None:
    x, x_auth, _, _ = orgs
    workflow = _create(client, x_auth, "ran")
    execution = Execution.create(
        execution_id=uuid.uuid4(),
        workflow_id=UUID(workflow["id"]),
        workflow_version=1,
        workflow_revision=1,
        mode="async",
        input={},
        meta=_meta(x),
    )
    execution.start(worker_id="planted", meta=_meta(x))
    execution.succeed(output={}, output_truncated=False, meta=_meta(x))
    queued, _, succeeded = execution.collect_events()
    # The ending arrives without the execution's first event (which names its workflow).
    ending = _plant(
        db_target, workflow_app, succeeded, workflow_app.mapper.to_stored_event(succeeded).state
    )
    after = _create(client, x_auth, "after")
    _wait_for(lambda: _tracking(db_target, "workflow-runs") >= after["position"], "the recorder")
    [letter] = [x for x in _letters(db_target, "workflow-runs") if x.position == ending]
    assert letter.event == "Execution.Succeeded" and "KeyError" in letter.error

    # What was missing is there now: the retry records the run in the workflow's history.
    _plant(db_target, workflow_app, queued, workflow_app.mapper.to_stored_event(queued).state)
    retried = _cli(db_target, "projections", "dead-letters", "retry", "--id", str(letter.id))
    assert retried.returncode == 0, retried.stderr
    [done] = [x for x in _letters(db_target, "workflow-runs") if x.id == letter.id]
    assert done.resolution == "retried"
    recorded = workflow_app.repository.get(UUID(workflow["id"]))
    assert isinstance(recorded, Workflow) and recorded.runs == 1


def test_an_execution_input_no_view_can_hold_stops_no_other_organisations_executions(
    client: httpx.Client,
    db_target: PgTarget,
    workflow_app: WorkflowApplication,
    orgs: tuple[str, dict[str, str], str, dict[str, str]],
) -> None:
    x, x_auth, _, y_auth = orgs
    workflow = _create(client, x_auth, "runs")
    execution = Execution.create(
        execution_id=uuid.uuid4(),
        workflow_id=UUID(workflow["id"]),
        workflow_version=1,
        workflow_revision=1,
        mode="async",
        input={"n": PLANTED},
        meta=_meta(x),
    )
    [event] = execution.collect_events()
    planted = _plant(db_target, workflow_app, event, _with_big_int(workflow_app, event))

    theirs = _create(client, y_auth, "theirs")
    run = client.post(
        f"/v1/workflows/{theirs['id']}/executions",
        json={"input": {"a": 1}, "mode": "sync"},
        headers=y_auth,
    )
    assert run.status_code == 200, run.text
    got = _read(
        client, y_auth, f"/v1/executions/{run.json()['execution_id']}", run.json()["position"]
    )
    assert got.status_code == 200, got.text
    assert got.json()["status"] == "succeeded"
    [letter] = [x for x in _letters(db_target, "executions") if x.position == planted]
    assert letter.event == "Execution.Queued" and letter.org_id == x
    assert (
        _read(client, x_auth, f"/v1/executions/{execution.id}", run.json()["position"]).status_code
        == 404
    )


def test_a_document_that_misses_an_event_says_so_and_a_rebuild_marks_it_the_same(
    client: httpx.Client,
    db_target: PgTarget,
    workflow_app: WorkflowApplication,
    orgs: tuple[str, dict[str, str], str, dict[str, str]],
) -> None:
    x, x_auth, _, _ = orgs
    created = _create(client, x_auth, "to go stale")
    workflow_id = UUID(created["id"])
    planted = plant_update(db_target, workflow_app, workflow_id, x, big=True)
    # The write side goes on with the workflow; its next event waits behind the dead one.
    renamed = client.delete(f"/v1/workflows/{workflow_id}", headers={**x_auth, "If-Match": '"2"'})
    assert renamed.status_code == 200, renamed.text

    got = _read(client, x_auth, f"/v1/workflows/{workflow_id}", renamed.json()["position"])
    assert got.status_code == 200
    assert got.headers["X-Stale"] == "true"
    document = got.json()
    assert document["_stale"]["position"] == planted
    assert document["_stale"]["event"] == "Workflow.Updated"
    assert "64-bit" in document["_stale"]["error"]
    # As it was before the event: neither the nodes nor the deletion.
    assert (document["version"], document["deleted"]) == (1, False)
    assert document["nodes"] == workflow_body()["nodes"]
    listed = _read(
        client,
        x_auth,
        "/v1/workflows?filter=" + json.dumps({"_stale": {"$exists": True}}),
        renamed.json()["position"],
    )
    assert workflow_id in {UUID(item["id"]) for item in listed.json()["items"]}
    letters = [x for x in _letters(db_target, "workflows") if x.originator_id == workflow_id]
    assert [(x.position, x.blocked_by) for x in letters] == [
        (planted, None),
        (renamed.json()["position"], planted),
    ]

    projector = Projector(workflow_app, db_target, WorkflowsProjection())
    assert verify(projector).ok  # a rebuild marks it exactly as the live projector did
    rebuild(projector)
    again = [x for x in _letters(db_target, "workflows") if x.originator_id == workflow_id]
    assert [x.resolved_at for x in again] == [None, None]
    assert again[0].attempts > letters[0].attempts  # the rebuild tried it once more
    after = client.get(f"/v1/workflows/{workflow_id}", headers=x_auth).json()
    assert after["_stale"] == document["_stale"]
    assert _letters(db_target, "workflows__rebuild") == []

    # Retried without a fix: it fails again, and says so.
    retried = _cli(db_target, "projections", "dead-letters", "retry", "--id", str(letters[0].id))
    assert retried.returncode == 1, retried.stderr
    assert "still fails" in retried.stderr


class FixedWorkflowsProjection(WorkflowsProjection):
    """Stands in for the code change that fixes the projection: integers beyond
    64 bits are kept as their decimal strings."""

    def apply(self, event: Any, position: int, view: Any) -> None:
        for name, value in list(vars(event).items()):
            object.__setattr__(event, name, _big_ints_as_strings(value))
        super().apply(event, position, view)


def _big_ints_as_strings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _big_ints_as_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_big_ints_as_strings(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return str(value)
    return value


def test_retry_after_a_fix_applies_the_waiting_events_in_order_and_unmarks_the_document(
    client: httpx.Client,
    db_target: PgTarget,
    workflow_app: WorkflowApplication,
    orgs: tuple[str, dict[str, str], str, dict[str, str]],
) -> None:
    x, x_auth, _, _ = orgs
    created = _create(client, x_auth, "to fix")
    workflow_id = UUID(created["id"])
    planted = plant_update(db_target, workflow_app, workflow_id, x, big=True)
    behind = plant_update(db_target, workflow_app, workflow_id, x, big=False)
    stale = _read(client, x_auth, f"/v1/workflows/{workflow_id}", behind)
    assert stale.json()["_stale"]["position"] == planted
    waiting = [x for x in _letters(db_target, "workflows") if x.originator_id == workflow_id]
    assert len(waiting) == 2

    fixed = Projector(workflow_app, db_target, FixedWorkflowsProjection())
    with fixed.connect() as conn:
        outcome = fixed.retry_dead_letters(conn, waiting[:1])  # one names its aggregate's chain
    assert (outcome.resolved, outcome.failed) == (2, [])

    got = client.get(f"/v1/workflows/{workflow_id}", headers=x_auth)
    assert "X-Stale" not in got.headers
    document = got.json()
    assert "_stale" not in document
    assert document["nodes"][1]["parameters"] == {"fields": {"n": str(BIG)}}
    assert (document["description"], document["version"]) == ("planted, but fine", 3)
    done = [x for x in _letters(db_target, "workflows") if x.originator_id == workflow_id]
    assert all(x.resolved_at is not None and x.resolution == "retried" for x in done)
    # The live projector goes on with the workflow's later events as usual.
    again = client.delete(f"/v1/workflows/{workflow_id}", headers={**x_auth, "If-Match": '"3"'})
    assert again.status_code == 200, again.text
    later = _read(client, x_auth, f"/v1/workflows/{workflow_id}", again.json()["position"])
    assert (later.json()["deleted"], later.json()["version"]) == (True, 4)

    # A rebuild by the fixed projection retries every other dead letter: what
    # applies now is resolved (the earlier tests' planted events), what does
    # not decode at all stays; and the views are what the fix builds.
    rebuild(fixed)
    letters = _letters(db_target, "workflows")
    still = [x for x in letters if x.resolved_at is None]
    assert [(x.org_id, x.originator_version) for x in still] == [(None, 1)]  # the broken state
    by_rebuild = {x.resolution for x in letters if x.resolution != "retried"} - {None}
    assert by_rebuild == {"applied by a rebuild"}
    assert "_stale" not in client.get(f"/v1/workflows/{workflow_id}", headers=x_auth).json()
    assert verify(fixed).ok
