"""Automatic retries (``settings.retry``) against the real PostgreSQL, a live worker and HTTP.

The auto-retrier is driven by hand (``catch_up``), so each test decides when
the log is read; a live worker runs the retries it queues, once their
back-off has passed.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from commands import WorkflowApplication, WorkflowCommands
from commands.auto_retries import NAME, AutoRetrier, retry_id
from commands.tenancy import OrganisationCommands, cli_actor
from domain.execution import Execution
from domain.meta import EventMeta
from infrastructure.database import PgTarget
from infrastructure.queue import enqueue
from infrastructure.settings import Settings
from projections.dead_letters import list_letters
from reporunner.wiring import ExecutionServices, create_app, create_execution_services
from tests.api.test_executions import _events, _wait_for_status, live_worker
from tests.api.test_retries import _call, _document, _node, _run, _workflow, flaky
from tests.helpers import serving, trigger, workflow_body
from tests.integration.test_dead_letters import _cli

__all__ = ["flaky", "live_worker"]  # fixtures, imported

pytestmark = pytest.mark.usefixtures("live_executions_projector", "live_worker")


@pytest.fixture(scope="module")
def services(
    workflow_app: WorkflowApplication, db_target: PgTarget, app_settings: Settings
) -> Iterator[ExecutionServices]:
    services = create_execution_services(
        workflow_app, WorkflowCommands(workflow_app), db_target, app_settings
    )
    yield services
    services.close()


@pytest.fixture
def make_retrier(services: ExecutionServices) -> Callable[[], AutoRetrier]:
    def make() -> AutoRetrier:
        retrier = AutoRetrier(services.commands)
        retrier.ensure_tracking()
        return retrier

    return make


@pytest.fixture
def retrier(make_retrier: Callable[[], AutoRetrier]) -> AutoRetrier:
    return make_retrier()


def _create(client: httpx.Client, headers: dict[str, str], nodes: list[Any], **retry: Any) -> str:
    ids = [node["id"] for node in nodes]
    body = workflow_body(
        nodes=nodes,
        connections=[{"from": a, "to": b} for a, b in itertools.pairwise(ids)],
        settings={"retry": retry},
    )
    response = client.post("/v1/workflows", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]  # type: ignore[no-any-return]


def _head(db_target: PgTarget) -> int:
    with psycopg.connect(db_target.conninfo()) as conn:
        row = conn.execute("SELECT max(notification_id) FROM reporunner_events").fetchone()
    assert row is not None
    return int(row[0])


def _queued_retries_of(db_target: PgTarget, execution_id: str) -> int:
    """How many Queued events in the log retry ``execution_id``."""
    with psycopg.connect(db_target.conninfo()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM reporunner_events WHERE topic LIKE '%%Execution.Queued' "
            "AND convert_from(state, 'UTF8')::jsonb #>> '{retry_of,_data_}' = %s",
            (uuid.UUID(execution_id).hex,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_an_always_failing_workflow_is_retried_with_back_off_until_max_attempts(
    client: httpx.Client,
    owner: dict[str, str],
    db_target: PgTarget,
    retrier: AutoRetrier,
    record_runs: Callable[[], int],
) -> None:
    workflow_id = _create(
        client,
        owner,
        [trigger(), _node("boom", "stop_and_error", message="always")],
        max_attempts=3,
        backoff_ms=300,
    )
    chain = [_run(client, owner, workflow_id)["execution_id"]]
    for _ in range(2):
        retrier.catch_up()
        chain.append(str(retry_id(uuid.UUID(chain[-1]))))
        assert _wait_for_status(db_target, chain[-1], {"failed"}) == "failed"
    retrier.catch_up()  # the third attempt failed too: the last one
    assert _queued_retries_of(db_target, chain[-1]) == 0
    assert _events(db_target, str(retry_id(uuid.UUID(chain[-1])))) == []

    head = _head(db_target)
    documents = [_document(client, owner, execution_id, head) for execution_id in chain]
    assert [d["attempt"] for d in documents] == [1, 2, 3]
    assert [d["trigger"] for d in documents] == ["manual", "retry", "retry"]
    assert [d["retry_of"] for d in documents] == [None, chain[0], chain[1]]
    assert [d["retried_by"] for d in documents] == [[chain[1]], [chain[2]], []]
    assert [d["created_by"] for d in documents[1:]] == ["auto-retry", "auto-retry"]
    assert all(d["status"] == "failed" for d in documents)
    # From the failed node: the trigger's output is reused, only "boom" runs again.
    for retry in documents[1:]:
        assert retry["reused_nodes"] == ["start"] and retry["mode"] == "async"
        assert [run["node_id"] for run in retry["node_runs"]] == ["boom"]
    # The back-off doubles from each failure, and no worker started a retry before it.
    assert documents[0]["not_before"] is None
    for previous, retry, back_off_ms in zip(documents[:-1], documents[1:], (300, 600), strict=True):
        not_before = _at(retry["not_before"])
        assert not_before == _at(previous["finished_at"]) + timedelta(milliseconds=back_off_ms)
        assert _at(retry["started_at"]) >= not_before

    # The chain in the workflow's history: each run, its trigger, attempt and what it retried.
    record_runs()
    history = client.get(f"/v1/workflows/{workflow_id}/history", headers=owner).json()["items"]
    runs = [item["execution"] for item in history if item["type"] == "Workflow.Executed"]
    assert [(r["id"], r["trigger"], r["retry_of"], r["attempt"]) for r in runs] == [
        (chain[0], "manual", None, 1),
        (chain[1], "retry", chain[0], 2),
        (chain[2], "retry", chain[1], 3),
    ]
    assert {r["status"] for r in runs} == {"failed"}


def test_a_workflow_that_succeeds_on_its_second_attempt_is_retried_no_more(
    client: httpx.Client,
    owner: dict[str, str],
    db_target: PgTarget,
    retrier: AutoRetrier,
    flaky: tuple[str, dict[str, Any]],
) -> None:
    base, state = flaky
    workflow_id = _create(
        client,
        owner,
        [trigger(), _call("first", f"{base}/ok"), _call("call", f"{base}/flaky")],
        max_attempts=5,
        backoff_ms=0,
    )
    first = _run(client, owner, workflow_id)
    assert first["status"] == "failed"
    state["failing"] = False
    retrier.catch_up()
    second = str(retry_id(uuid.UUID(first["execution_id"])))
    assert _wait_for_status(db_target, second, {"succeeded", "failed"}) == "succeeded"
    retrier.catch_up()
    assert _queued_retries_of(db_target, second) == 0
    # "first" made its call once: the retry reused its output.
    assert state["paths"] == ["/ok", "/flaky", "/flaky"]
    runs = client.get(
        "/v1/executions",
        params={"filter": f'{{"workflow_id": "{workflow_id}"}}', "sort": "created_at"},
        headers={**owner, "X-Min-Position": str(_head(db_target))},
    ).json()["items"]
    assert [(r["attempt"], r["status"]) for r in runs] == [(1, "failed"), (2, "succeeded")]


def _crashed(
    app: WorkflowApplication, services: ExecutionServices, workflow_id: str, org: str
) -> str:
    """An execution whose worker died mid-run: started, its lease soon expired.

    The live worker claims the row once the lease has expired and settles it
    as crashed, exactly as after a killed worker process.
    """
    workflow = services.commands.workflows.get(uuid.UUID(workflow_id), org)
    execution = Execution.create(
        execution_id=uuid.uuid4(),
        workflow_id=workflow.id,
        workflow_version=workflow.version,
        workflow_revision=workflow.revision,
        mode="async",
        input={"n": 1},
        meta=EventMeta(org_id=org, actor="apikey:test", correlation_id="crash"),
    )
    execution.start(
        worker_id="ghost", meta=EventMeta(org_id=org, actor="worker:ghost", correlation_id="crash")
    )
    rows = enqueue(execution.id, org, workflow.id, claimed_by="ghost", lease_s=0.3)
    app.save(execution, side_statements=rows)
    return str(execution.id)


def test_crashed_executions_are_retried_only_when_on_names_crashed(
    client: httpx.Client,
    owner: dict[str, str],
    org: str,
    db_target: PgTarget,
    retrier: AutoRetrier,
    services: ExecutionServices,
    workflow_app: WorkflowApplication,
) -> None:
    nodes = [trigger(), _node("n", "noop")]
    asked = _create(client, owner, nodes, max_attempts=2, backoff_ms=0, on=["failed", "crashed"])
    default = _create(client, owner, nodes, max_attempts=2, backoff_ms=0)
    crashed = {wid: _crashed(workflow_app, services, wid, org) for wid in (asked, default)}
    for execution_id in crashed.values():
        assert _wait_for_status(db_target, execution_id, {"crashed"}) == "crashed"
    retrier.catch_up()
    assert _queued_retries_of(db_target, crashed[default]) == 0
    assert _queued_retries_of(db_target, crashed[asked]) == 1
    retry = str(retry_id(uuid.UUID(crashed[asked])))
    assert _wait_for_status(db_target, retry, {"succeeded", "failed"}) == "succeeded"
    document = _document(client, owner, retry, _head(db_target))
    assert (document["attempt"], document["retry_of"]) == (2, crashed[asked])


def test_reading_the_same_endings_again_records_no_second_retry(
    client: httpx.Client,
    owner: dict[str, str],
    db_target: PgTarget,
    make_retrier: Callable[[], AutoRetrier],
) -> None:
    workflow_id = _create(
        client,
        owner,
        [trigger(), _node("boom", "stop_and_error", message="x")],
        max_attempts=2,
        backoff_ms=60_000,  # the retry waits: it is still queued when the log is read again
    )
    before = _head(db_target)
    failed = _run(client, owner, workflow_id)["execution_id"]
    # Two instances at once (two processes): the retry is recorded once.
    retriers = [make_retrier(), make_retrier()]
    threads = [threading.Thread(target=r.catch_up) for r in retriers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    retriers[0].catch_up()
    assert _queued_retries_of(db_target, failed) == 1
    # A replay: the tracking position moved back before the failure, read again.
    with psycopg.connect(db_target.conninfo()) as conn:
        conn.execute("UPDATE projection_tracking SET position = %s WHERE name = %s", (before, NAME))
    assert retriers[1].catch_up() > 0
    assert _queued_retries_of(db_target, failed) == 1
    retry = str(retry_id(uuid.UUID(failed)))
    assert _events(db_target, retry) == ["Queued"]  # waiting out its back-off, untouched
    document = _document(client, owner, retry, _head(db_target))
    assert document["status"] == "queued" and document["not_before"] is not None
    # Cancelling the waiting retry ends the chain; a canceled run is not retried.
    canceled = client.post(f"/v1/executions/{retry}/cancel", headers=owner)
    assert canceled.status_code == 200, canceled.text
    retriers[0].catch_up()
    assert _queued_retries_of(db_target, retry) == 0


def test_bad_retry_settings_are_422_naming_the_field(
    client: httpx.Client, owner: dict[str, str]
) -> None:
    body = workflow_body(settings={"retry": {"max_attempts": 0, "backoff_ms": 0, "on": ["x"]}})
    response = client.post("/v1/workflows", json=body, headers=owner)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert {problem["loc"] for problem in response.json()["errors"]} >= {
        "settings.retry.max_attempts",
        "settings.retry.on[0]",
    }


def test_a_retry_is_not_recorded_for_a_deleted_workflow(
    client: httpx.Client,
    owner: dict[str, str],
    db_target: PgTarget,
    retrier: AutoRetrier,
) -> None:
    workflow_id = _workflow(
        client, owner, [trigger(), _node("boom", "stop_and_error", message="x")]
    )
    plain = _run(client, owner, workflow_id)["execution_id"]
    retrying = _create(
        client,
        owner,
        [trigger(), _node("boom", "stop_and_error", message="x")],
        max_attempts=3,
        backoff_ms=0,
    )
    failed = _run(client, owner, retrying)["execution_id"]
    deleted = client.delete(f"/v1/workflows/{retrying}", headers={**owner, "If-Match": '"1"'})
    assert deleted.status_code == 200
    retrier.catch_up()
    # Neither a workflow without settings.retry nor a deleted one gets a retry.
    assert _queued_retries_of(db_target, plain) == 0
    assert _queued_retries_of(db_target, failed) == 0


def test_the_served_projections_role_records_automatic_retries(
    client: httpx.Client,
    owner: dict[str, str],
    app_settings: Settings,
    db_target: PgTarget,
) -> None:
    # The projections role as deployed: its own retrier follows the log.
    with serving(create_app(app_settings, db_target, roles=("projections",))):
        workflow_id = _create(
            client,
            owner,
            [trigger(), _node("boom", "stop_and_error", message="x")],
            max_attempts=2,
            backoff_ms=0,
        )
        failed = _run(client, owner, workflow_id)["execution_id"]
        retry = str(retry_id(uuid.UUID(failed)))
        # The live worker of this module runs it.
        assert _wait_for_status(db_target, retry, {"failed"}) == "failed"
        assert _queued_retries_of(db_target, failed) == 1


def test_an_ending_the_retrier_cannot_handle_is_a_dead_letter_retried_after_a_fix(
    client: httpx.Client,
    owner: dict[str, str],
    db_target: PgTarget,
    retrier: AutoRetrier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workflow_id = _create(
        client,
        owner,
        [trigger(), _node("boom", "stop_and_error", message="x")],
        max_attempts=2,
        backoff_ms=60_000,
    )
    failed = _run(client, owner, workflow_id)["execution_id"]
    handle = AutoRetrier._retry_of

    def broken(self: AutoRetrier, execution_id: uuid.UUID) -> Execution | None:
        if str(execution_id) == failed:
            raise RuntimeError("a bug in the retrier")
        return handle(self, execution_id)

    monkeypatch.setattr(AutoRetrier, "_retry_of", broken)
    retrier.catch_up()  # the follower goes on past it
    assert _queued_retries_of(db_target, failed) == 0
    with psycopg.connect(db_target.conninfo()) as conn:
        [letter] = [
            x for x in list_letters(conn, follower=NAME) if x.originator_id == uuid.UUID(failed)
        ]
    assert letter.event == "Execution.Failed" and "a bug in the retrier" in letter.error

    monkeypatch.undo()  # the fix: the CLI records the retry it missed, once
    retried = _cli(db_target, "projections", "dead-letters", "retry", "--id", str(letter.id))
    assert retried.returncode == 0, retried.stderr
    assert "auto-retries: 1 resolved" in retried.stderr
    assert _queued_retries_of(db_target, failed) == 1
    assert AutoRetrier(retrier.executions).retry_dead_letters([letter]) == (0, [])
    assert _queued_retries_of(db_target, failed) == 1


def test_automatic_retries_count_against_executions_per_day_and_stop_at_it(
    client: httpx.Client,
    owner: dict[str, str],
    org: str,
    db_target: PgTarget,
    workflow_app: WorkflowApplication,
    retrier: AutoRetrier,
) -> None:
    OrganisationCommands(workflow_app).create(
        org, "limited", {"executions_per_day": 2}, cli_actor()
    )
    workflow_id = _create(
        client,
        owner,
        [trigger(), _node("boom", "stop_and_error", message="always")],
        max_attempts=5,
        backoff_ms=0,
    )
    first = _run(client, owner, workflow_id)["execution_id"]  # the day's first run
    retrier.catch_up()
    second = str(retry_id(uuid.UUID(first)))  # its second
    assert _wait_for_status(db_target, second, {"failed"}) == "failed"
    retrier.catch_up()
    # A third would pass the limit: not queued, although attempts are left.
    assert _queued_retries_of(db_target, second) == 0
    with psycopg.connect(db_target.conninfo()) as conn:
        row = conn.execute(
            "SELECT executions FROM organisation_day_executions WHERE org_id = %s", (org,)
        ).fetchone()
    assert row == (2,)
    refused = client.post(
        f"/v1/workflows/{workflow_id}/executions", json={"mode": "sync"}, headers=owner
    )
    assert refused.status_code == 429 and refused.json()["limit"] == "executions_per_day"


def test_a_suspended_organisations_failed_runs_are_not_retried(
    client: httpx.Client,
    owner: dict[str, str],
    org: str,
    db_target: PgTarget,
    workflow_app: WorkflowApplication,
    retrier: AutoRetrier,
) -> None:
    organisations = OrganisationCommands(workflow_app)
    organisations.create(org, "to be suspended", {}, cli_actor())
    workflow_id = _create(
        client,
        owner,
        [trigger(), _node("boom", "stop_and_error", message="always")],
        max_attempts=3,
        backoff_ms=0,
    )
    first = _run(client, owner, workflow_id)["execution_id"]
    organisations.suspend(org, "unpaid", cli_actor())
    retrier.catch_up()
    assert _queued_retries_of(db_target, first) == 0
