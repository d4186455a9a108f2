"""Retention on the real event store, views and keyring, with a fake clock.

Executions are stamped in 1990 (``stamped_by``), and every pass runs at a
1990 ``now``: the other tests' executions (2026 and later) are never past
any window these passes use, so they are untouched in the shared database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands import CommandContext, CreateWorkflow, WorkflowApplication, WorkflowCommands
from commands.retention import PeriodicRetention, Retention
from domain.execution import Execution
from domain.meta import EventMeta
from domain.retention import day_scope
from infrastructure.crypto import MasterKey
from infrastructure.database import PgTarget
from infrastructure.keyring import KeyPurpose, Keyring
from infrastructure.sealing import ERASED, open_value, seal_value, sealed_key_ids
from projections.executions import ExecutionsProjection
from projections.rebuild import verify
from projections.runner import Projector
from projections.workflows import WorkflowsProjection
from reporunner.scheduler import Scheduler, start_scheduler
from tests.helpers import workflow_body
from tests.integration.test_cli import ROOT, _url

DAY0 = datetime(1990, 3, 1, 9, 30, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = DAY0) -> None:
        self.now = now


@contextmanager
def stamped_by(clock: Clock) -> Iterator[Clock]:
    """Execution events take their timestamps from ``clock``."""
    original = Execution.Event.__dict__.get("create_timestamp")
    Execution.Event.create_timestamp = staticmethod(lambda: clock.now)  # type: ignore[method-assign]
    try:
        yield clock
    finally:
        if original is None:
            del Execution.Event.create_timestamp
        else:
            Execution.Event.create_timestamp = original  # type: ignore[method-assign]


@pytest.fixture
def clock() -> Iterator[Clock]:
    with stamped_by(Clock()) as clock:
        yield clock


@pytest.fixture
def projector(workflow_app: WorkflowApplication, db_target: PgTarget) -> Projector:
    return Projector(workflow_app, db_target, ExecutionsProjection(), batch_size=50)


def meta(org: str) -> EventMeta:
    return EventMeta(org_id=org, actor="apikey:t", correlation_id="c")


def run_execution(
    app: WorkflowApplication,
    org: str,
    workflow_id: uuid.UUID,
    clock: Clock,
    at: datetime,
    outcome: str = "succeeded",
) -> Execution:
    """Queue an execution at ``at`` and take it to ``outcome`` (queued, succeeded, failed)."""
    clock.now = at
    execution = Execution.create(
        execution_id=uuid.uuid4(),
        workflow_id=workflow_id,
        workflow_version=1,
        workflow_revision=1,
        mode="async",
        input={"customer": "ada@example.com"},
        meta=meta(org),
    )
    if outcome != "queued":
        clock.now = at + timedelta(seconds=1)
        execution.start(worker_id="w", meta=meta(org))
        clock.now = at + timedelta(seconds=2)
        if outcome == "succeeded":
            execution.succeed(output={"a": [{"ok": 1}]}, output_truncated=False, meta=meta(org))
        else:
            execution.fail(error="node a failed", meta=meta(org))
    app.save(execution)
    return execution


def pin(app: WorkflowApplication, execution: Execution, org: str) -> None:
    execution = app.repository.get(execution.id)
    assert execution.pin(payload=None, key_scope=None, meta=meta(org))
    app.save(execution)


def catch_up(projector: Projector) -> None:
    with projector.connect() as conn:
        projector.ensure_tracking(conn)
        projector.catch_up(conn)


def documents(target: PgTarget, org: str) -> set[str]:
    with psycopg.connect(target.conninfo()) as conn:
        rows = conn.execute("SELECT _id FROM doc_executions WHERE org_id = %s", (org,)).fetchall()
    return {row[0] for row in rows}


def counters(target: PgTarget, org: str) -> list[Any]:
    with psycopg.connect(target.conninfo()) as conn:
        return conn.execute(
            "SELECT _id, data, _version, _position FROM doc_execution_stats WHERE org_id = %s "
            "ORDER BY _id",
            (org,),
        ).fetchall()


def topics(target: PgTarget, aggregate_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    with psycopg.connect(target.conninfo()) as conn:
        rows = conn.execute(
            "SELECT topic, state FROM reporunner_events WHERE originator_id = %s "
            "ORDER BY originator_version",
            (aggregate_id,),
        ).fetchall()
    return [(topic.rsplit(".", 1)[-1], orjson.loads(bytes(state))) for topic, state in rows]


def test_past_the_window_documents_are_pruned_counters_stay_and_pinned_are_kept(
    workflow_app: WorkflowApplication,
    projector: Projector,
    db_target: PgTarget,
    org: str,
    clock: Clock,
) -> None:
    workflow = uuid.uuid4()
    old = [
        run_execution(workflow_app, org, workflow, clock, DAY0 + timedelta(minutes=i))
        for i in range(7)
    ]
    failed = run_execution(workflow_app, org, workflow, clock, DAY0, "failed")
    still_queued = run_execution(workflow_app, org, workflow, clock, DAY0, "queued")
    pinned = run_execution(workflow_app, org, workflow, clock, DAY0)
    pin(workflow_app, pinned, org)
    recent = run_execution(workflow_app, org, workflow, clock, DAY0 + timedelta(days=20))
    catch_up(projector)
    counted = counters(db_target, org)
    assert len(documents(db_target, org)) == 11

    retention = Retention(workflow_app, None, global_days=10, batch_size=3)
    # Day 0 is past a 10-day window from day 11 on; day 20 is not.
    outcome = retention.run(DAY0 + timedelta(days=11))
    catch_up(projector)

    assert outcome.executions_expired >= 8  # (and any 1990 leftovers of other tests)
    assert outcome.batches >= 3  # bounded: 3 at a time
    assert documents(db_target, org) == {str(still_queued.id), str(pinned.id), str(recent.id)}
    assert counters(db_target, org) == counted  # the dashboards count what ran
    expired = topics(db_target, old[0].id)[-1]
    assert expired[0] == "Expired"
    assert expired[1]["meta"]["actor"] == "retention"
    assert expired[1]["retention_days"] == 10
    assert expired[1]["as_of"] == "1990-03-02"
    assert str(failed.id) not in documents(db_target, org)
    # A rebuild meets the Expired events too: it equals the pruned view.
    assert verify(projector).ok

    again = retention.run(DAY0 + timedelta(days=11))  # idempotent, view caught up or not
    assert (again.executions_expired, again.keys_destroyed) == (0, 0)
    catch_up(projector)
    assert documents(db_target, org) == {str(still_queued.id), str(pinned.id), str(recent.id)}


def test_a_rerun_before_the_view_catches_up_passes_over_what_expired(
    workflow_app: WorkflowApplication,
    projector: Projector,
    db_target: PgTarget,
    org: str,
    clock: Clock,
) -> None:
    workflow = uuid.uuid4()
    executions = [run_execution(workflow_app, org, workflow, clock, DAY0) for _ in range(4)]
    catch_up(projector)
    retention = Retention(workflow_app, None, global_days=10, batch_size=2)
    assert retention.run(DAY0 + timedelta(days=12)).executions_expired == 4
    # The view still holds them: the aggregates decide, nothing is expired twice.
    second = retention.run(DAY0 + timedelta(days=12))
    assert second.executions_expired == 0
    assert second.passed_over >= 4
    for execution in executions:
        assert [t for t, _ in topics(db_target, execution.id)].count("Expired") == 1
    catch_up(projector)
    assert documents(db_target, org) == set()


def _workflow(commands: WorkflowCommands, org: str, **settings: Any) -> uuid.UUID:
    ctx = CommandContext(org_id=org, actor="apikey:t", correlation_id="c")
    created = commands.create(CreateWorkflow(**workflow_body(settings=settings)), ctx)
    return created.workflow_id


def test_a_workflows_own_retention_days_wins_over_the_global_setting(
    workflow_app: WorkflowApplication,
    commands: WorkflowCommands,
    projector: Projector,
    db_target: PgTarget,
    org: str,
    clock: Clock,
) -> None:
    short = _workflow(commands, org, retention_days=2)
    forever = _workflow(commands, org, retention_days=0)
    default = _workflow(commands, org)
    workflows = Projector(workflow_app, db_target, WorkflowsProjection(), batch_size=50)
    catch_up(workflows)
    runs = {w: run_execution(workflow_app, org, w, clock, DAY0) for w in (short, forever, default)}
    catch_up(projector)
    retention = Retention(workflow_app, None, global_days=30, batch_size=10)

    retention.run(DAY0 + timedelta(days=5))  # past 2 days, inside 30
    catch_up(projector)
    assert documents(db_target, org) == {str(runs[forever].id), str(runs[default].id)}

    retention.run(DAY0 + timedelta(days=400))  # past 30 days; 0 keeps for ever
    catch_up(projector)
    assert documents(db_target, org) == {str(runs[forever].id)}


def test_day_keys_past_the_window_are_destroyed_and_their_payloads_read_as_erased(
    workflow_app: WorkflowApplication, db_target: PgTarget, org: str
) -> None:
    connect = workflow_app.event_store.datastore.get_connection
    keyring = Keyring(MasterKey.parse(os.environ["REPORUNNER_MASTER_KEY"]), connect, 0)
    workflow = uuid.uuid4()
    old_day, kept_day = date(1990, 3, 1), date(1990, 3, 20)
    sealed = {}
    for day in (old_day, kept_day):
        key = keyring.key_for(org, KeyPurpose.DAY, day_scope(day, workflow))
        assert key is not None
        sealed[day] = seal_value({"customer": "ada@example.com"}, [key], f"{org}/x/input")

    outcome = Retention(workflow_app, keyring, global_days=10, batch_size=10).run(
        datetime(1990, 3, 25, tzinfo=UTC)
    )

    assert outcome.keys_destroyed == 1

    def opened(day: date) -> Any:
        keys = [keyring.find(key_id) for key_id in sealed_key_ids(sealed[day])]
        return open_value(sealed[day], keys, f"{org}/x/input")

    assert opened(old_day) == ERASED
    assert opened(kept_day) == {"customer": "ada@example.com"}
    with psycopg.connect(db_target.conninfo()) as conn:
        records = [
            orjson.loads(bytes(state))
            for (state,) in conn.execute(
                "SELECT state FROM reporunner_events WHERE topic LIKE %s",
                ("%RetentionRecord.DayKeysDestroyed",),
            ).fetchall()
        ]
        destroyed_by = conn.execute(
            "SELECT destroyed_by FROM data_keys WHERE org_id = %s AND scope = %s",
            (org, day_scope(old_day, workflow)),
        ).fetchone()
    assert destroyed_by == ("retention",)
    mine = [record for record in records if record["meta"]["org_id"] == org]
    assert len(mine) == 1
    record = mine[0]
    assert record["meta"]["actor"] == "retention"
    assert record["day_keys"] == [
        {"scope": day_scope(old_day, workflow), "key_id": sealed_key_ids(sealed[old_day])[0]}
    ]
    # The whole address: "ada" alone turns up in random hex ids now and then.
    assert "ada@example.com" not in orjson.dumps(record).decode()
    again = Retention(workflow_app, keyring, global_days=10, batch_size=10).run(
        datetime(1990, 3, 25, tzinfo=UTC)
    )
    assert again.keys_destroyed == 0


def test_the_periodic_job_takes_one_batch_per_round_and_waits_out_its_interval(
    workflow_app: WorkflowApplication,
    projector: Projector,
    db_target: PgTarget,
    org: str,
    clock: Clock,
) -> None:
    workflow = uuid.uuid4()
    for _ in range(3):
        run_execution(workflow_app, org, workflow, clock, DAY0)
    catch_up(projector)
    periodic = PeriodicRetention(
        Retention(workflow_app, None, global_days=10, batch_size=1), timedelta(hours=1)
    )
    now = DAY0 + timedelta(days=15)
    steps = [periodic.step(now) for _ in range(6)]
    assert [s.executions_expired for s in steps if s is not None][:3] == [1, 1, 1]
    assert None in steps  # the pass ended: the next waits an interval
    assert periodic.step(now + timedelta(minutes=30)) is None
    assert periodic.step(now + timedelta(hours=2)) is not None
    catch_up(projector)
    assert documents(db_target, org) == set()


def test_the_cli_runs_a_pass_at_now(
    workflow_app: WorkflowApplication,
    projector: Projector,
    db_target: PgTarget,
    org: str,
    clock: Clock,
) -> None:
    workflow = uuid.uuid4()
    execution = run_execution(workflow_app, org, workflow, clock, DAY0)
    env = {
        **os.environ,
        "DATABASE_URL": _url(db_target),
        "REPORUNNER_EXECUTION_RETENTION_DAYS": "10",
        "REPORUNNER_LOG_FORMAT": "json",
    }
    command = [sys.executable, "-m", "reporunner", "retention", "run", "--now"]
    bad = subprocess.run(
        [*command, "yesterday"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert "--now must be an ISO 8601 time" in bad.stderr
    catch_up(projector)
    done = subprocess.run(
        [*command, "1990-03-30T00:00:00Z"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    answer = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert answer["executions_pruned"] >= 1
    catch_up(projector)
    assert str(execution.id) not in documents(db_target, org)


# -- the property: a rebuild equals the pruned live view, counters never move ------------

_STEPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("run"), st.integers(0, 30), st.sampled_from(["succeeded", "failed", "queued"])
        ),
        st.tuples(st.just("pin"), st.integers(0, 20), st.just("")),
        st.tuples(st.just("unpin"), st.integers(0, 20), st.just("")),
        st.tuples(st.just("retain"), st.integers(0, 60), st.just("")),
    ),
    min_size=1,
    max_size=14,
)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=_STEPS, days=st.integers(1, 20), batch=st.integers(1, 4))
def test_pruned_views_equal_a_rebuild_and_counters_stay(
    workflow_app: WorkflowApplication,
    db_target: PgTarget,
    steps: list[tuple[str, int, str]],
    days: int,
    batch: int,
) -> None:
    org = f"prop-{uuid.uuid4().hex[:8]}"
    workflow = uuid.uuid4()
    projector = Projector(workflow_app, db_target, ExecutionsProjection(), batch_size=batch)
    retention = Retention(workflow_app, None, global_days=days, batch_size=batch)
    executions: list[Execution] = []
    with stamped_by(Clock()) as clock:
        for action, n, outcome in steps:
            if action == "run":
                at = DAY0 + timedelta(days=n, minutes=len(executions))
                executions.append(run_execution(workflow_app, org, workflow, clock, at, outcome))
            elif action in ("pin", "unpin") and executions:
                execution = workflow_app.repository.get(executions[n % len(executions)].id)
                if execution.is_finished and not execution.expired:
                    if action == "pin":
                        execution.pin(payload=None, key_scope=None, meta=meta(org))
                    else:
                        execution.unpin(meta=meta(org))
                    workflow_app.save(execution)
            elif action == "retain":
                catch_up(projector)
                before = counters(db_target, org)
                retention.run(DAY0 + timedelta(days=n))
                catch_up(projector)
                assert counters(db_target, org) == before
    catch_up(projector)
    kept = {
        str(e.id) for e in (workflow_app.repository.get(x.id) for x in executions) if not e.expired
    }
    assert documents(db_target, org) == kept
    assert verify(projector).ok


def test_the_scheduler_leader_runs_retention(
    workflow_app: WorkflowApplication,
    projector: Projector,
    db_target: PgTarget,
    org: str,
    clock: Clock,
) -> None:
    workflow = uuid.uuid4()
    executions = [run_execution(workflow_app, org, workflow, clock, DAY0) for _ in range(3)]
    catch_up(projector)
    scheduler = Scheduler(
        workflow_app,
        db_target,
        tick_s=0.05,
        grace=timedelta(seconds=60),
        max_fires=10,
        clock=lambda: DAY0 + timedelta(days=15),
    )
    scheduler.retention = PeriodicRetention(
        Retention(workflow_app, None, global_days=10, batch_size=1), timedelta(hours=1)
    )
    stop = threading.Event()
    thread = start_scheduler(scheduler, stop)
    try:
        deadline = time.monotonic() + 30  # a bound for a broken scheduler, not a timing claim
        while time.monotonic() < deadline:
            if all(topics(db_target, e.id)[-1][0] == "Expired" for e in executions):
                break
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert all(topics(db_target, e.id)[-1][0] == "Expired" for e in executions)
    catch_up(projector)
    assert documents(db_target, org) == set()
