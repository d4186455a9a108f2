"""Command handlers against the real event store, without HTTP."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commands import (
    CommandContext,
    CreateWorkflow,
    UpdateWorkflow,
    VersionConflict,
    WorkflowApplication,
    WorkflowCommands,
    WorkflowNotFound,
    idempotent_workflow_id,
)
from domain.errors import WorkflowDeleted
from domain.workflow import Workflow
from tests.helpers import noop, trigger, workflow_body


def _ctx(org: str, key: str | None = None) -> CommandContext:
    return CommandContext(
        org_id=org, actor="apikey:test", correlation_id="corr", idempotency_key=key
    )


def test_idempotent_create_derives_the_id_from_org_and_key(
    commands: WorkflowCommands, org: str
) -> None:
    result = commands.create(CreateWorkflow(**workflow_body()), _ctx(org, "k1"))
    assert result.workflow_id == idempotent_workflow_id(org, "k1")
    assert idempotent_workflow_id(org, "k1") != idempotent_workflow_id(org + "x", "k1")


def test_commands_on_missing_or_foreign_workflows(commands: WorkflowCommands, org: str) -> None:
    created = commands.create(CreateWorkflow(**workflow_body()), _ctx(org))
    with pytest.raises(WorkflowNotFound):
        commands.update(created.workflow_id, UpdateWorkflow(name="x"), 1, _ctx("someone-else"))
    with pytest.raises(WorkflowNotFound):
        commands.delete(uuid.uuid4(), 1, _ctx(org))
    commands.delete(created.workflow_id, 1, _ctx(org))
    with pytest.raises(WorkflowDeleted):
        commands.update(created.workflow_id, UpdateWorkflow(name="x"), 2, _ctx(org))
    with pytest.raises(VersionConflict) as conflict:
        commands.update(
            commands.create(CreateWorkflow(**workflow_body()), _ctx(org)).workflow_id,
            UpdateWorkflow(name="x"),
            5,
            _ctx(org),
        )
    assert conflict.value.current == 1


def test_positions_are_the_log_positions_of_the_last_event(
    commands: WorkflowCommands, workflow_app: WorkflowApplication, org: str
) -> None:
    created = commands.create(CreateWorkflow(**workflow_body()), _ctx(org))
    updated = commands.update(created.workflow_id, UpdateWorkflow(tags=["a"]), 1, _ctx(org))
    assert updated.position > created.position
    [notification] = workflow_app.recorder.select_notifications(updated.position, 1)
    assert notification.originator_id == created.workflow_id
    assert notification.originator_version == 2


def test_long_histories_are_snapshotted(
    commands: WorkflowCommands, workflow_app: WorkflowApplication, org: str
) -> None:
    result = commands.create(CreateWorkflow(**workflow_body()), _ctx(org))
    for version in range(1, 120):
        result = commands.update(
            result.workflow_id, UpdateWorkflow(description=f"d{version}"), version, _ctx(org)
        )
    assert workflow_app.snapshots is not None
    snapshots = list(workflow_app.snapshots.get(result.workflow_id))
    assert [s.originator_version for s in snapshots] == [50, 100]
    loaded = commands.get(result.workflow_id, org)
    assert loaded.version == 120 and loaded.description == "d119"


def test_a_stale_kept_copy_still_ends_in_409_or_410(
    workflow_app: WorkflowApplication, org: str
) -> None:
    # Two processes, each keeping what it committed last (LastCommitted).
    other_app = WorkflowApplication(env=dict(workflow_app.env))
    ours, theirs = WorkflowCommands(workflow_app), WorkflowCommands(other_app)
    ctx = _ctx(org)
    try:
        workflow_id = ours.create(CreateWorkflow(**workflow_body()), ctx).workflow_id
        theirs.update(workflow_id, UpdateWorkflow(name="theirs"), 1, ctx)

        def events() -> int:
            return len(list(workflow_app.events.get(workflow_id)))

        # Ours still keeps version 1: deciding on it cannot win against the log.
        with pytest.raises(VersionConflict) as conflict:
            ours.update(workflow_id, UpdateWorkflow(name="ours"), 1, ctx)
        assert conflict.value.current == 2 and events() == 2
        # Expecting a version it does not keep, ours reads the log.
        assert ours.update(workflow_id, UpdateWorkflow(name="ours"), 2, ctx).version == 3
        assert theirs.get(workflow_id, org).name == "ours"
        theirs.delete(workflow_id, 3, ctx)
        # Ours keeps version 3, which is no longer the latest: the answer is 410.
        with pytest.raises(WorkflowDeleted):
            ours.update(workflow_id, UpdateWorkflow(name="late"), 3, ctx)
        assert events() == 4
    finally:
        other_app.close()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE reporunner_events SET topic = 'x'",
        "DELETE FROM reporunner_events",
        "TRUNCATE reporunner_events",
    ],
)
def test_the_log_refuses_updates_and_deletes(
    db_target: Any, org: str, commands: WorkflowCommands, statement: str
) -> None:
    import psycopg

    commands.create(CreateWorkflow(**workflow_body()), _ctx(org))
    with psycopg.connect(db_target.conninfo()) as conn:
        count = conn.execute("SELECT count(*) FROM reporunner_events").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM reporunner_events").fetchone() == count


# --- replaying the log rebuilds exactly what the handlers returned -----------------

# Any storable text: everything but lone surrogates and NUL (validation refuses both).
_text = st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00")
_names = st.text(_text, min_size=1, max_size=30).filter(lambda s: s.strip() != "")
_tags = st.lists(st.text("abcdefgh", min_size=1, max_size=8), max_size=4, unique=True)


@st.composite
def _definitions(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(0, 4))
    nodes = [trigger()] + [noop(f"n{i}") for i in range(count)]
    connections = [{"from": "start", "to": f"n{i}"} for i in range(count)]
    return {"nodes": nodes, "connections": connections}


_updates = st.fixed_dictionaries(
    {},
    optional={
        "name": _names,
        "description": st.text(_text, max_size=40),
        "tags": _tags,
        "settings": st.sampled_from([{}, {"timeout_ms": 1000}, {"timeout_ms": 30000}]),
        "definition": _definitions(),
    },
).filter(bool)


@settings(max_examples=25)
@given(
    name=_names,
    steps=st.lists(st.one_of(_updates, st.just("delete")), min_size=1, max_size=8),
)
def test_replaying_the_log_rebuilds_the_state_handlers_returned(
    commands: WorkflowCommands, workflow_app: WorkflowApplication, name: str, steps: list[Any]
) -> None:
    org = f"prop-{uuid.uuid4().hex[:10]}"
    ctx = _ctx(org)
    body = workflow_body(name)
    result = commands.create(CreateWorkflow(**body), ctx)
    # An independent model of what each accepted command should leave behind.
    model: dict[str, Any] = {**body, "deleted": False}
    expected: dict[int, dict[str, Any]] = {result.version: dict(model)}
    for step in steps:
        if model["deleted"]:
            with pytest.raises(WorkflowDeleted):
                commands.delete(result.workflow_id, result.version, ctx)
            break
        if step == "delete":
            result = commands.delete(result.workflow_id, result.version, ctx)
            model["deleted"] = True
        else:
            changes = dict(step)
            changes.update(changes.pop("definition", {}))
            changed = any(model[k] != v for k, v in changes.items())
            before = result.version
            result = commands.update(
                result.workflow_id, UpdateWorkflow(**changes), result.version, ctx
            )
            assert result.version == before + (1 if changed else 0)
            model.update(changes)
        expected[result.version] = dict(model)

    # A fresh application without caches replays the stored events.
    fresh = WorkflowApplication(env=dict(workflow_app.env))
    try:
        for version, state in expected.items():
            replayed = fresh.repository.get(result.workflow_id, version=version)
            assert isinstance(replayed, Workflow)
            assert replayed.version == version
            assert replayed.org_id == org and replayed.created_by == "apikey:test"
            assert {**replayed.definition(), "deleted": replayed.deleted} == state
    finally:
        fresh.close()
