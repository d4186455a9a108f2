"""The executions projection (documents and dashboard counters) on the real event store."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb
from structlog.testing import capture_logs

from commands import WorkflowApplication
from domain.execution import EXECUTION_STATUSES, Execution
from domain.meta import EventMeta
from infrastructure.database import PgTarget, create_engine
from projections.executions import (
    COUNTERS_SQL,
    EXECUTION_ROWS_SQL,
    ExecutionsProjection,
    counter_id,
)
from projections.rebuild import CACHE_CAPACITY, rebuild, verify
from projections.runner import Projector
from read_api.executions import Period, load_summary
from tests.api.test_pre_contract_values import old_execution

BASE = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
OUTCOMES = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "canceled_queued",
    "canceled_running",
    "crashed",
)


class Clock:
    """The time execution events are stamped with, set by the test."""

    def __init__(self, now: datetime = BASE) -> None:
        self.now = now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@contextmanager
def stamped_by(clock: Clock) -> Iterator[Clock]:
    """Execution events take their timestamps from ``clock`` (eventsourcing asks
    the event class for ``create_timestamp``; nothing else reads the time)."""
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


def meta(org: str, actor: str = "apikey:t") -> EventMeta:
    return EventMeta(org_id=org, actor=actor, correlation_id="c")


def queue(org: str, workflow_id: uuid.UUID, **overrides: Any) -> Execution:
    fields: dict[str, Any] = {
        "execution_id": uuid.uuid4(),
        "workflow_id": workflow_id,
        "workflow_version": 1,
        "workflow_revision": 1,
        "mode": "async",
        "input": {"n": 1},
        "meta": meta(org),
    }
    return Execution.create(**(fields | overrides))


def drive(
    execution: Execution, outcome: str, clock: Clock, org: str, duration_ms: int = 1500
) -> None:
    """Take a queued execution to ``outcome`` (one of OUTCOMES), ``duration_ms`` from start."""
    if outcome in ("queued", "canceled_queued"):
        if outcome == "canceled_queued":
            clock.advance(seconds=1)
            execution.cancel(meta=meta(org, "apikey:canceler"))
        return
    clock.advance(milliseconds=250)
    execution.start(worker_id="worker-1", meta=meta(org))
    clock.advance(milliseconds=duration_ms)
    if outcome == "succeeded":
        execution.succeed(output={"a": [{"ok": True}]}, output_truncated=False, meta=meta(org))
    elif outcome == "failed":
        execution.fail(error="node a failed", meta=meta(org))
    elif outcome == "canceled_running":
        execution.cancel(meta=meta(org, "apikey:canceler"))
    elif outcome == "crashed":
        execution.crash(reason="lease expired", meta=meta(org))


def save(app: WorkflowApplication, execution: Execution) -> int:
    """Record the execution's new events; returns the log position of the last."""
    return app.save(execution)[-1].notification.id


def catch_up(projector: Projector) -> None:
    with projector.connect() as conn:
        projector.ensure_tracking(conn)
        projector.catch_up(conn)


def document(target: PgTarget, table: str, doc_id: str) -> Any:
    with psycopg.connect(target.conninfo()) as conn:
        row = conn.execute(
            f"SELECT data, org_id, _version, created FROM {table} WHERE _id = %s", (doc_id,)
        ).fetchone()
    return row


def counters(
    target: PgTarget, org: str, granularity: str, workflow: uuid.UUID | None, at: datetime
) -> dict[str, Any]:
    row = document(
        target,
        "doc_execution_stats",
        counter_id(org, granularity, None if workflow is None else str(workflow), at),
    )
    assert row is not None, (granularity, workflow, at)
    return row[0]  # type: ignore[no-any-return]


def counter_rows(target: PgTarget, org: str) -> tuple[list[Any], list[Any]]:
    """The org's counters as the projection keeps them, and as COUNTERS_SQL computes
    them from its execution documents: (_id, data, _version, created), by _id."""
    columns = "_id, org_id, data, _version, created"
    source = EXECUTION_ROWS_SQL + " WHERE org_id = %(org)s"
    with psycopg.connect(target.conninfo()) as conn:
        kept = conn.execute(
            f"SELECT {columns} FROM doc_execution_stats WHERE org_id = %(org)s ORDER BY _id",
            {"org": org},
        ).fetchall()
        computed = conn.execute(
            f"SELECT {columns} FROM ({COUNTERS_SQL.format(source=source)}) c ORDER BY _id",
            {"org": org},
        ).fetchall()
    return kept, computed


def summary(
    target: PgTarget, org: str, period: Period, workflow_id: str | None = None
) -> dict[str, Any]:
    async def load() -> dict[str, Any]:
        engine = create_engine(target, pool_size=1)
        try:
            return await load_summary(engine, org, period, workflow_id)
        finally:
            await engine.dispose()

    return asyncio.run(load())


def test_an_execution_with_node_runs_is_projected_whole(
    workflow_app: WorkflowApplication,
    projector: Projector,
    db_target: PgTarget,
    org: str,
    clock: Clock,
) -> None:
    clock.now = BASE + timedelta(hours=9, minutes=15)
    queued_at = clock.now
    workflow_id = uuid.uuid4()
    execution = queue(org, workflow_id, input=[{"x": 1}, {"x": 2}], mode="sync")
    clock.advance(seconds=2)
    execution.start(worker_id="worker-7", meta=meta(org))
    started_at = clock.now
    execution.record_node_started(node_id="start", attempt=1, meta=meta(org))
    clock.advance(milliseconds=100)
    execution.record_node_succeeded(
        node_id="start",
        attempt=1,
        outputs={"main": [{"x": 1}]},
        outputs_truncated=False,
        meta=meta(org),
    )
    execution.record_node_started(node_id="http", attempt=1, meta=meta(org))
    clock.advance(milliseconds=300)
    execution.record_node_failed(
        node_id="http", attempt=1, error="HTTP 503", will_retry=True, meta=meta(org)
    )
    execution.record_node_started(node_id="http", attempt=2, meta=meta(org))
    clock.advance(milliseconds=400)
    execution.record_node_succeeded(
        node_id="http",
        attempt=2,
        outputs={"main": [{"status": 200}]},
        outputs_truncated=True,
        meta=meta(org),
    )
    clock.advance(milliseconds=200)
    execution.succeed(output={"http": [{"status": 200}]}, output_truncated=False, meta=meta(org))
    save(workflow_app, execution)
    catch_up(projector)

    data, doc_org, version, created = document(db_target, "doc_executions", str(execution.id))
    assert doc_org == org and version == 9 and created == queued_at
    assert "org_id" not in data  # the org is the row's column, as for workflows
    assert data | {"node_runs": None} == {
        "id": str(execution.id),
        "workflow_id": str(workflow_id),
        "workflow_version": 1,
        "workflow_revision": 1,
        "mode": "sync",
        "status": "succeeded",
        "input": [{"x": 1}, {"x": 2}],
        "version": 9,
        "trigger": "manual",
        "retry_of": None,
        "reused_nodes": [],
        "retried_by": [],
        "attempt": 1,
        "not_before": None,
        "created_at": queued_at.isoformat(),
        "created_by": "apikey:t",
        "updated_at": clock.now.isoformat(),
        "started_at": started_at.isoformat(),
        "finished_at": clock.now.isoformat(),
        "duration_ms": 1000,
        "worker_id": "worker-7",
        "error": None,
        "output": {"http": [{"status": 200}]},
        "output_truncated": False,
        "canceled_by": None,
        "node_runs": None,
        "node_summary": {"succeeded": 2, "failed": 1},
    }
    runs = [(r["node_id"], r["attempt"], r["status"]) for r in data["node_runs"]]
    assert runs == [
        ("start", 1, "succeeded"),
        ("http", 1, "failed"),
        ("http", 2, "succeeded"),
    ]
    assert data["node_runs"][1]["error"] == "HTTP 503" and data["node_runs"][1]["will_retry"]
    assert data["node_runs"][2]["outputs"] == {"main": [{"status": 200}]}
    assert data["node_runs"][2]["outputs_truncated"] is True
    assert (
        data["node_runs"][0]["finished_at"]
        == (started_at + timedelta(milliseconds=100)).isoformat()
    )

    hour = BASE + timedelta(hours=9)
    for granularity, bucket in (("hour", hour), ("day", BASE)):
        for scope in (None, workflow_id):
            stats = counters(db_target, org, granularity, scope, bucket)
            assert stats == {
                "workflow_id": None if scope is None else str(workflow_id),
                "granularity": granularity,
                "bucket": bucket.isoformat(),
                "executions": 1,
                "queued": 0,
                "running": 0,
                "succeeded": 1,
                "failed": 0,
                "canceled": 0,
                "crashed": 0,
                "by_trigger": {"manual": 1},
                "duration_ms_sum": 1000,
                "duration_count": 1,
                "duration_hist": {"142": 1},  # 1.05^141 <= 1000 < 1.05^142
            }


def test_counters_follow_each_status_change(
    workflow_app: WorkflowApplication,
    projector: Projector,
    db_target: PgTarget,
    org: str,
    clock: Clock,
) -> None:
    clock.now = BASE + timedelta(hours=23, minutes=59)
    workflow_id = uuid.uuid4()
    execution = queue(org, workflow_id)
    hour = BASE + timedelta(hours=23)

    def statuses() -> dict[str, int]:
        catch_up(projector)
        stats = counters(db_target, org, "hour", None, hour)
        day = counters(db_target, org, "day", workflow_id, BASE)
        assert {
            k: v for k, v in day.items() if k not in ("workflow_id", "granularity", "bucket")
        } == {k: v for k, v in stats.items() if k not in ("workflow_id", "granularity", "bucket")}
        return {
            k: v for k, v in stats.items() if k in ("executions", "queued", "running", "failed")
        }

    save(workflow_app, execution)
    assert statuses() == {"executions": 1, "queued": 1, "running": 0, "failed": 0}
    clock.advance(minutes=2)  # the next day: the execution stays in its queued hour
    execution.start(worker_id="w", meta=meta(org))
    save(workflow_app, execution)
    assert statuses() == {"executions": 1, "queued": 0, "running": 1, "failed": 0}
    execution.record_node_started(node_id="a", attempt=1, meta=meta(org))
    save(workflow_app, execution)
    assert statuses() == {"executions": 1, "queued": 0, "running": 1, "failed": 0}
    clock.advance(seconds=3)
    execution.fail(error="boom", meta=meta(org))
    save(workflow_app, execution)
    assert statuses() == {"executions": 1, "queued": 0, "running": 0, "failed": 1}
    data, *_ = document(db_target, "doc_executions", str(execution.id))
    assert data["error"] == "boom" and data["duration_ms"] == 3000
    assert data["node_runs"][0]["status"] == "interrupted"
    assert data["node_runs"][0]["finished_at"] == data["finished_at"]


def test_canceled_and_crashed_executions(
    workflow_app: WorkflowApplication,
    projector: Projector,
    db_target: PgTarget,
    org: str,
    clock: Clock,
) -> None:
    workflow_id = uuid.uuid4()
    outcomes = {}
    for outcome in ("canceled_queued", "canceled_running", "crashed"):
        execution = queue(org, workflow_id)
        drive(execution, outcome, clock, org, duration_ms=2000)
        save(workflow_app, execution)
        outcomes[outcome] = execution.id
    catch_up(projector)

    queued_cancel, *_ = document(db_target, "doc_executions", str(outcomes["canceled_queued"]))
    assert (
        queued_cancel["status"] == "canceled" and queued_cancel["canceled_by"] == "apikey:canceler"
    )
    assert queued_cancel["started_at"] is None and queued_cancel["duration_ms"] is None
    running_cancel, *_ = document(db_target, "doc_executions", str(outcomes["canceled_running"]))
    assert running_cancel["status"] == "canceled" and running_cancel["duration_ms"] == 2000
    crashed, *_ = document(db_target, "doc_executions", str(outcomes["crashed"]))
    assert crashed["status"] == "crashed" and crashed["error"] == "lease expired"

    stats = counters(db_target, org, "day", None, BASE)
    assert (stats["executions"], stats["canceled"], stats["crashed"]) == (3, 2, 1)
    assert stats["duration_count"] == 2  # the run canceled while queued never ran
    assert stats["duration_ms_sum"] == 4000


def test_percentiles_are_within_five_percent(
    workflow_app: WorkflowApplication,
    projector: Projector,
    db_target: PgTarget,
    org: str,
    clock: Clock,
) -> None:
    durations = [int(1.37**k) + k for k in range(40)]  # 1 ms .. ~ 300 s, uneven gaps
    for duration in durations:
        execution = queue(org, uuid.uuid4())
        drive(execution, "succeeded", clock, org, duration_ms=duration)
        save(workflow_app, execution)
    catch_up(projector)

    figures = summary(db_target, org, Period(BASE, BASE + timedelta(hours=24)))
    ordered = sorted(durations)
    for p in (50, 95, 99):
        exact = ordered[-(-p * len(ordered) // 100) - 1]  # nearest rank
        assert figures["duration_ms"][f"p{p}"] == pytest.approx(exact, rel=0.05, abs=0.1)
    assert figures["duration_ms"]["mean"] == round(sum(durations) / len(durations), 1)


def test_rebuild_gives_the_same_documents_and_counters(
    workflow_app: WorkflowApplication,
    projector: Projector,
    db_target: PgTarget,
    org: str,
    clock: Clock,
) -> None:
    workflow_id = uuid.uuid4()
    for i, outcome in enumerate(OUTCOMES * 2):
        clock.now = BASE + timedelta(hours=5 * i)
        execution = queue(org, workflow_id)
        drive(execution, outcome, clock, org)
        save(workflow_app, execution)
    catch_up(projector)
    before = summary(db_target, org, Period(BASE, BASE + timedelta(days=4)))
    rebuild(projector)
    assert verify(projector).ok
    assert summary(db_target, org, Period(BASE, BASE + timedelta(days=4))) == before
    assert before["totals"]["all"] == 14


def _counter_storage(db_target: PgTarget) -> tuple[list[str], str | None]:
    """The counters table's storage parameters, and how a year-sized counter is stored."""
    histogram = {str(bucket): bucket for bucket in range(300)}  # ~5 kB of jsonb
    with psycopg.connect(db_target.conninfo(), autocommit=True) as conn:
        (options,) = conn.execute(
            "SELECT reloptions FROM pg_class WHERE relname = 'doc_execution_stats'"
        ).fetchone() or (None,)
        with conn.transaction(force_rollback=True):
            conn.execute(
                "INSERT INTO doc_execution_stats "
                "(_id, org_id, data, _version, _position, created, updated) "
                "VALUES ('storage-probe', 'storage-probe', %s, 1, 0, now(), now())",
                (Jsonb({"duration_hist": histogram}),),
            )
            (compression,) = conn.execute(
                "SELECT pg_column_compression(data) FROM doc_execution_stats "
                "WHERE _id = 'storage-probe'"
            ).fetchone() or (None,)
    return list(options or []), compression


def test_counters_are_stored_uncompressed_before_and_after_a_rebuild(
    projector: Projector, db_target: PgTarget
) -> None:
    # Compressed, every field the summary reads would decompress the document again.
    assert _counter_storage(db_target) == (["toast_tuple_target=8160"], None)
    rebuild(projector)
    assert _counter_storage(db_target) == (["toast_tuple_target=8160"], None)


def expected_figures(
    runs: list[tuple[str, datetime, str]], period: Period, workflow_id: str | None = None
) -> dict[str, Any]:
    """Totals and top failing workflows computed directly from (workflow, queued_at, status)."""
    first, end = period.hours()
    counted = [
        (workflow, status)
        for workflow, queued_at, status in runs
        if first <= queued_at.replace(minute=0, second=0, microsecond=0) < end
        and workflow_id in (None, workflow)
    ]
    statuses = Counter(status for _, status in counted)
    totals = {status: statuses.get(status, 0) for status in EXECUTION_STATUSES}
    totals["all"] = len(counted)
    failing = Counter(w for w, status in counted if status in ("failed", "crashed"))
    top = sorted(failing.items(), key=lambda item: (-item[1], item[0]))[:5]
    return {"totals": totals, "top": [(w, n) for w, n in top]}


@settings(max_examples=15)
@given(
    plan=st.lists(
        st.tuples(
            st.integers(0, 2),  # workflow
            st.one_of(st.integers(0, 71), st.integers(0, 24 * 75)),  # queued hour after BASE
            st.integers(0, 59),  # minute
            st.sampled_from(OUTCOMES),
            st.integers(0, 200_000),  # duration ms
            st.booleans(),  # a retry of the last execution that may be retried
        ),
        min_size=1,
        max_size=12,
    ),
    batch_size=st.integers(1, 7),
    window=st.tuples(
        st.integers(0, 71),
        st.integers(0, 59),
        st.one_of(st.integers(1, 72 * 60), st.integers(1, 75 * 24 * 60)),  # minutes
    ),
    processes=st.sampled_from([1, 2]),
    # 1 and 2: the load evicts documents (new and already stored) and reads them back.
    cache_capacity=st.sampled_from([1, 2, CACHE_CAPACITY]),
)
def test_incremental_view_equals_a_rebuild_and_counts_every_execution_once(
    workflow_app: WorkflowApplication,
    db_target: PgTarget,
    plan: list[tuple[int, int, int, str, int, bool]],
    batch_size: int,
    window: tuple[int, int, int],
    processes: int,
    cache_capacity: int,
) -> None:
    org = f"prop-{uuid.uuid4().hex[:8]}"
    workflows = [str(uuid.uuid4()) for _ in range(3)]
    projector = Projector(workflow_app, db_target, ExecutionsProjection(), batch_size=batch_size)
    runs: list[tuple[str, datetime, str]] = []
    with projector.connect() as conn, stamped_by(Clock()) as clock:
        projector.ensure_tracking(conn)
        retryable: Execution | None = None
        retried_by: dict[str, list[str]] = {}
        for workflow, hour, minute, outcome, duration, is_retry in plan:
            clock.now = BASE + timedelta(hours=hour, minutes=minute)
            queued_at = clock.now
            if is_retry and retryable is not None:
                execution = queue(org, retryable.workflow_id, retry_of=retryable)
                retried_by.setdefault(str(retryable.id), []).append(str(execution.id))
                workflow = workflows.index(str(retryable.workflow_id))
            else:
                execution = queue(org, uuid.UUID(workflows[workflow]))
            save(workflow_app, execution)
            projector.run_batch(conn)  # small batches, interleaved with writes
            drive(execution, outcome, clock, org, duration)
            workflow_app.save(execution)  # nothing new when it stays queued
            projector.run_batch(conn)
            runs.append((workflows[workflow], queued_at, execution.status))
            if execution.status in ("failed", "canceled", "crashed"):
                retryable = execution
    catch_up(projector)
    # In one process, or two (by organisation: the earlier examples' are in the log too).
    with capture_logs() as logs:
        assert verify(projector, processes=processes, cache_capacity=cache_capacity).ok
    assert not [line for line in logs if "failed" in line["event"]]  # no fallback
    kept, computed = counter_rows(db_target, org)
    assert kept == computed
    assert kept  # every execution is counted, in six documents at least
    for retried_id, retry_ids in retried_by.items():
        assert document(db_target, "doc_executions", retried_id)[0]["retried_by"] == retry_ids

    start_hour, start_minute, minutes = window
    since = BASE + timedelta(hours=start_hour, minutes=start_minute)
    period = Period(since, since + timedelta(minutes=minutes))
    for workflow_id in (None, workflows[0]):
        figures = summary(db_target, org, period, workflow_id)
        expected = expected_figures(runs, period, workflow_id)
        assert figures["totals"] == expected["totals"]
        assert sum(figures["by_trigger"].values()) == expected["totals"]["all"]
        assert [
            (w["workflow_id"], w["failed"]) for w in figures["top_failing_workflows"]
        ] == expected["top"]
        assert (
            figures["previous"]["totals"]
            == expected_figures(runs, period.previous, workflow_id)["totals"]
        )
        assert sum(point["executions"] for point in figures["series"]) == expected["totals"]["all"]


def test_retries_are_linked_both_ways_and_a_rebuild_equals_the_live_view(
    workflow_app: WorkflowApplication, db_target: PgTarget, org: str, clock: Clock
) -> None:
    workflow_id = uuid.uuid4()
    # batch_size 1: each retry meets the document it links to in another batch.
    projector = Projector(workflow_app, db_target, ExecutionsProjection(), batch_size=1)
    first = queue(org, workflow_id)
    drive(first, "failed", clock, org)
    save(workflow_app, first)
    retries = []
    for _ in range(2):
        retry = queue(org, workflow_id, retry_of=first)
        drive(retry, "crashed", clock, org)
        save(workflow_app, retry)
        retries.append(retry)
    due = clock.now + timedelta(seconds=30)
    again = queue(org, workflow_id, retry_of=retries[0], not_before=due)
    save(workflow_app, again)
    catch_up(projector)

    data, _, version, _ = document(db_target, "doc_executions", str(first.id))
    assert (data["trigger"], data["retry_of"]) == ("manual", None)
    assert data["retried_by"] == [str(r.id) for r in retries]
    assert version == first.version  # linking a retry is no event of its own
    retry_data = document(db_target, "doc_executions", str(retries[0].id))[0]
    assert (retry_data["trigger"], retry_data["retry_of"]) == ("retry", str(first.id))
    assert retry_data["retried_by"] == [str(again.id)]
    assert retry_data["status"] == "crashed"
    again_data = document(db_target, "doc_executions", str(again.id))[0]
    assert [data["attempt"], retry_data["attempt"], again_data["attempt"]] == [1, 2, 3]
    assert (retry_data["not_before"], again_data["not_before"]) == (None, due.isoformat())

    period = Period(BASE, BASE + timedelta(days=1))
    figures = summary(db_target, org, period)
    assert figures["by_trigger"] == {"manual": 1, "webhook": 0, "schedule": 0, "retry": 3}
    assert summary(db_target, org, period, str(workflow_id))["by_trigger"]["retry"] == 3

    rebuild(projector)  # one batch: retries meet their retried documents in it
    assert verify(projector).ok
    assert document(db_target, "doc_executions", str(first.id))[0] == data
    assert summary(db_target, org, period) == figures


def test_queued_events_from_before_retries_project_as_manual_runs(
    workflow_app: WorkflowApplication, projector: Projector, db_target: PgTarget, org: str
) -> None:
    execution = queue(org, uuid.uuid4())
    [queued] = execution.pending_events
    for name in ("trigger", "retry_of", "reused_nodes", "attempt", "not_before"):
        del queued.__dict__[name]  # as an earlier release recorded it
    save(workflow_app, execution)
    catch_up(projector)
    data = document(db_target, "doc_executions", str(execution.id))[0]
    assert (data["attempt"], data["not_before"]) == (1, None)
    assert (data["trigger"], data["retry_of"], data["reused_nodes"], data["retried_by"]) == (
        "manual",
        None,
        [],
        [],
    )


def test_a_parallel_rebuild_partitions_an_execution_from_before_the_value_contract(
    workflow_app: WorkflowApplication, db_target: PgTarget
) -> None:
    """Found by the property test in CI: a NaN in a stored state (which orjson refuses)
    made every parallel load fall back to one process."""
    org = f"old-{uuid.uuid4().hex[:8]}"
    old = old_execution(org, {"n": math.nan, "big": 1e20})
    workflow_app.save(old)
    projector = Projector(workflow_app, db_target, ExecutionsProjection())
    catch_up(projector)
    with capture_logs() as logs:
        assert verify(projector, processes=2).ok
    assert not [line for line in logs if "failed" in line["event"]]  # no fallback
