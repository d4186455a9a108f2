"""The workflows projection against the real event store and PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from commands import (
    CommandContext,
    CreateWorkflow,
    UpdateWorkflow,
    WorkflowApplication,
    WorkflowCommands,
)
from commands.models import MoveWorkflow, ShareWorkflow
from commands.projects import CreateProject, ProjectCommands
from domain.project import default_project_id
from infrastructure.database import PgTarget
from projections.rebuild import CACHE_CAPACITY, rebuild, verify
from projections.runner import Projector, status
from projections.workflows import WorkflowsProjection
from tests.helpers import record_run, workflow_body


@pytest.fixture
def projector(workflow_app: WorkflowApplication, db_target: PgTarget) -> Projector:
    return Projector(
        workflow_app, db_target, WorkflowsProjection(), batch_size=50, poll_interval=0.1
    )


def _ctx(org: str) -> CommandContext:
    return CommandContext(org_id=org, actor="apikey:t", correlation_id="c")


def _doc(target: PgTarget, table: str, doc_id: str) -> Any:
    with psycopg.connect(target.conninfo()) as conn:
        row = conn.execute(
            f"SELECT data, org_id, _version, _position FROM {table} WHERE _id = %s", (doc_id,)
        ).fetchone()
    return row


def _catch_up(projector: Projector) -> int:
    with projector.connect() as conn:
        projector.ensure_tracking(conn)
        return projector.catch_up(conn)


def test_projects_created_updated_deleted(
    commands: WorkflowCommands, projector: Projector, db_target: PgTarget, org: str
) -> None:
    created = commands.create(CreateWorkflow(**workflow_body("first", tags=["a"])), _ctx(org))
    updated = commands.update(created.workflow_id, UpdateWorkflow(name="second"), 1, _ctx(org))
    _catch_up(projector)
    data, doc_org, version, position = _doc(db_target, "doc_workflows", str(created.workflow_id))
    assert doc_org == org and version == 2 and position == updated.position
    assert data["name"] == "second" and data["tags"] == ["a"] and data["deleted"] is False
    assert data["created_by"] == "apikey:t" and data["id"] == str(created.workflow_id)
    v1, *_ = _doc(db_target, "doc_workflow_versions", f"{created.workflow_id}:1")
    v2, *_ = _doc(db_target, "doc_workflow_versions", f"{created.workflow_id}:2")
    assert v1["name"] == "first" and v1["event"] == "Created"
    assert v2["name"] == "second" and v2["event"] == "Updated" and v2["changed"] == ["name"]

    commands.delete(created.workflow_id, 2, _ctx(org))
    _catch_up(projector)
    data, *_ = _doc(db_target, "doc_workflows", str(created.workflow_id))
    assert data["deleted"] is True and data["version"] == 3


def test_a_run_moves_no_version_and_makes_no_version_document(
    commands: WorkflowCommands,
    workflow_app: WorkflowApplication,
    projector: Projector,
    db_target: PgTarget,
    org: str,
) -> None:
    created = commands.create(CreateWorkflow(**workflow_body("first")), _ctx(org))
    record_run(workflow_app, created.workflow_id)
    updated = commands.update(created.workflow_id, UpdateWorkflow(name="second"), 1, _ctx(org))
    record_run(workflow_app, created.workflow_id)
    _catch_up(projector)
    data, _, version, position = _doc(db_target, "doc_workflows", str(created.workflow_id))
    assert (data["version"], version, data["runs"]) == (2, 2, 2)
    assert position > updated.position  # the run was applied, at the same version
    assert data["last_execution"]["status"] == "succeeded"
    with psycopg.connect(db_target.conninfo()) as conn:
        rows = conn.execute(
            "SELECT _id, _version, data->>'name' FROM doc_workflow_versions "
            "WHERE data->>'workflow_id' = %s ORDER BY _version",
            (str(created.workflow_id),),
        ).fetchall()
    workflow_id = created.workflow_id
    assert rows == [(f"{workflow_id}:1", 1, "first"), (f"{workflow_id}:2", 2, "second")]


def test_a_failed_batch_applies_nothing_and_a_retry_applies_everything_once(
    commands: WorkflowCommands, projector: Projector, db_target: PgTarget, org: str
) -> None:
    _catch_up(projector)
    ids = [
        commands.create(CreateWorkflow(**workflow_body(f"w{i}")), _ctx(org)).workflow_id
        for i in range(5)
    ]
    original = projector.projection.apply
    calls = 0

    def crash_on_third(event: Any, position: int, view: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("projector crashed mid-batch")
        original(event, position, view)

    projector.projection.apply = crash_on_third  # type: ignore[method-assign]
    with pytest.raises(RuntimeError), projector.connect() as conn:
        projector.run_batch(conn)
    projector.projection.apply = original  # type: ignore[method-assign]
    assert all(_doc(db_target, "doc_workflows", str(i)) is None for i in ids)
    _catch_up(projector)
    assert all(_doc(db_target, "doc_workflows", str(i))[2] == 1 for i in ids)
    assert verify(projector).ok


def test_status_reports_lag(commands: WorkflowCommands, projector: Projector, org: str) -> None:
    _catch_up(projector)
    commands.create(CreateWorkflow(**workflow_body()), _ctx(org))
    commands.create(CreateWorkflow(**workflow_body()), _ctx(org))
    with projector.connect() as conn:
        [before] = status(conn, ["workflows"])
    assert before.lag_events == 2 and before.head == before.position + 2
    _catch_up(projector)
    with projector.connect() as conn:
        [after] = status(conn, ["workflows"])
    assert after.lag_events == 0 and after.lag_seconds == 0


def test_two_live_projectors_apply_each_event_once(
    commands: WorkflowCommands, workflow_app: WorkflowApplication, db_target: PgTarget, org: str
) -> None:
    stop = threading.Event()
    projectors = [
        Projector(workflow_app, db_target, WorkflowsProjection(), batch_size=7, poll_interval=0.05)
        for _ in range(2)
    ]
    threads = [threading.Thread(target=p.run_forever, args=(stop,)) for p in projectors]
    for thread in threads:
        thread.start()
    try:
        last = None
        for i in range(30):
            result = commands.create(CreateWorkflow(**workflow_body(f"live{i}")), _ctx(org))
            last = commands.update(
                result.workflow_id, UpdateWorkflow(description="d"), 1, _ctx(org)
            )
        assert last is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with projectors[0].connect() as conn:
                if status(conn, ["workflows"])[0].position >= last.position:
                    break
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert verify(projectors[0]).ok
    data, *_ = _doc(db_target, "doc_workflows", str(last.workflow_id))
    assert data["version"] == 2 and data["description"] == "d"


def test_rebuild_swaps_in_an_equal_view_while_readers_read(
    commands: WorkflowCommands, projector: Projector, db_target: PgTarget, org: str
) -> None:
    for i in range(20):
        commands.create(CreateWorkflow(**workflow_body(f"r{i}")), _ctx(org))
    _catch_up(projector)
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with psycopg.connect(db_target.conninfo(), autocommit=True) as conn:
                while not stop.is_set():
                    row = conn.execute(
                        "SELECT count(*) FROM doc_workflows WHERE org_id = %s", (org,)
                    ).fetchone()
                    seen.append(int(row[0]))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        position = rebuild(projector)
    finally:
        stop.set()
        reader.join()
    assert not errors
    assert seen and set(seen) == {20}  # never a half-built view
    with projector.connect() as conn:
        assert status(conn, ["workflows"])[0].position == position
    assert verify(projector).ok


def test_verify_reports_a_tampered_view(
    projector: Projector, db_target: PgTarget, commands: WorkflowCommands, org: str
) -> None:
    result = commands.create(CreateWorkflow(**workflow_body("honest")), _ctx(org))
    _catch_up(projector)
    with psycopg.connect(db_target.conninfo()) as conn:
        conn.execute(
            "UPDATE doc_workflows SET data = jsonb_set(data, '{name}', '\"forged\"') "
            "WHERE _id = %s",
            (str(result.workflow_id),),
        )
    outcome = verify(projector)
    assert not outcome.ok
    assert outcome.differences["workflows"] == [str(result.workflow_id)]
    rebuild(projector)
    assert verify(projector).ok


@settings(max_examples=15)
@given(
    steps=st.lists(
        st.sampled_from(["create", "update", "run", "delete", "move", "share", "unshare"]),
        min_size=1,
        max_size=12,
    ),
    batch_size=st.integers(1, 7),
    processes=st.sampled_from([1, 2]),
    # 1 and 2: the load evicts documents (new and already stored) and reads them back.
    cache_capacity=st.sampled_from([1, 2, CACHE_CAPACITY]),
)
def test_incremental_view_equals_a_rebuild(
    commands: WorkflowCommands,
    workflow_app: WorkflowApplication,
    db_target: PgTarget,
    steps: list[str],
    batch_size: int,
    processes: int,
    cache_capacity: int,
) -> None:
    org = f"prop-{uuid.uuid4().hex[:8]}"
    projector = Projector(workflow_app, db_target, WorkflowsProjection(), batch_size=batch_size)
    other = ProjectCommands(workflow_app).create(CreateProject(name="other"), _ctx(org))
    projects = [other.project_id, default_project_id(org)]
    live: dict[Any, int] = {}
    for step in steps:
        if step in ("move", "share", "unshare") and live:
            # Membership changes leave the revision (the If-Match) where it is.
            workflow_id, version = next(iter(live.items()))
            workflow = commands.get(workflow_id, org)
            there = next(p for p in projects if str(p) != workflow.project_id)
            if step == "move":
                commands.move(workflow_id, MoveWorkflow(project_id=there), version, _ctx(org))
            elif step == "share":
                role = "editor" if version % 2 else "viewer"
                share = ShareWorkflow(project_id=there, role=role)
                commands.share(workflow_id, share, version, _ctx(org))
            elif str(there) in workflow.shares:
                commands.unshare(workflow_id, there, version, _ctx(org))
        elif step == "create" or not live:
            result = commands.create(CreateWorkflow(**workflow_body()), _ctx(org))
            live[result.workflow_id] = result.version
        elif step == "update":
            workflow_id, version = next(iter(live.items()))
            live[workflow_id] = commands.update(
                workflow_id, UpdateWorkflow(description=f"v{version}"), version, _ctx(org)
            ).version
        elif step == "run":
            record_run(workflow_app, next(iter(live)))
        else:
            workflow_id, version = live.popitem()
            commands.delete(workflow_id, version, _ctx(org))
        with projector.connect() as conn:
            projector.ensure_tracking(conn)
            projector.run_batch(conn)  # one small batch at a time, interleaved with writes
    _catch_up(projector)
    # The rebuild loads in one process, or in two (by workflow), as a long log does.
    with capture_logs() as logs:
        assert verify(projector, processes=processes, cache_capacity=cache_capacity).ok
    assert not [line for line in logs if "failed" in line["event"]]  # no fallback


class ScatteredWorkflows(WorkflowsProjection):
    """A partition key that does not hold: one workflow's events go anywhere."""

    def partition(self, originator_id: Any, state: bytes) -> str:
        return uuid.uuid4().hex


def test_a_parallel_load_whose_partitions_do_not_hold_is_done_again_in_one_process(
    commands: WorkflowCommands, workflow_app: WorkflowApplication, db_target: PgTarget, org: str
) -> None:
    for i in range(6):
        created = commands.create(CreateWorkflow(**workflow_body(f"s{i}")), _ctx(org))
        commands.update(created.workflow_id, UpdateWorkflow(description="x"), 1, _ctx(org))
    projector = Projector(workflow_app, db_target, ScatteredWorkflows(), batch_size=50)
    _catch_up(projector)
    with capture_logs() as logs:
        position = rebuild(projector, processes=2)
    assert "parallel load failed; loading again in one process" in [e["event"] for e in logs]
    with projector.connect() as conn:
        assert status(conn, ["workflows"])[0].position == position
    assert verify(projector, processes=2).ok
    assert verify(projector, processes=1).ok


def test_live_projector_survives_losing_its_connections(
    commands: WorkflowCommands, workflow_app: WorkflowApplication, db_target: PgTarget, org: str
) -> None:
    stop = threading.Event()
    projector = Projector(workflow_app, db_target, WorkflowsProjection(), poll_interval=0.05)
    thread = threading.Thread(target=projector.run_forever, args=(stop,))
    thread.start()

    def projected(position: int) -> bool:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with projector.connect() as conn:
                if status(conn, ["workflows"])[0].position >= position:
                    return True
            time.sleep(0.05)
        return False

    try:
        first = commands.create(CreateWorkflow(**workflow_body("before")), _ctx(org))
        assert projected(first.position)
        with psycopg.connect(db_target.conninfo(), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'reporunner-projector:workflows'"
            ).fetchone()
        assert killed is not None and killed[0] >= 2  # lock, work and listen connections
        second = commands.create(CreateWorkflow(**workflow_body("after")), _ctx(org))
        assert projected(second.position)
    finally:
        stop.set()
        thread.join(timeout=10)
    data, *_ = _doc(db_target, "doc_workflows", str(second.workflow_id))
    assert data["name"] == "after"
    assert verify(projector).ok
