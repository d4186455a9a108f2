"""Command handlers against the real event store, without HTTP."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError
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
from commands.errors import NoSuchVersion, WorkflowBusy
from commands.handlers import HOLD_RUNS_AFTER, SAVE_ATTEMPTS
from domain.errors import WorkflowDeleted
from tests.helpers import noop, record_run, trigger, workflow_body


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
        # Nor can a change that is none on the kept copy: no save, still a 409.
        with pytest.raises(VersionConflict) as conflict:
            ours.update(workflow_id, UpdateWorkflow(name="wf"), 1, ctx)
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


# --- runs between a read and a write -----------------------------------------------


def _events(app: WorkflowApplication, workflow_id: uuid.UUID) -> list[str]:
    return [type(e).__name__ for e in app.events.get(workflow_id)]


def test_a_run_recorded_after_the_read_is_no_conflict(
    workflow_app: WorkflowApplication, org: str
) -> None:
    # The runs follower works in its own process: ours keeps revision 1 at
    # stream version 1, the log has moved to 2. The save at 2 loses on the
    # log's key; ours reads the log again, finds revision 1, saves at 3.
    follower = WorkflowApplication(env=dict(workflow_app.env))
    ours, ctx = WorkflowCommands(workflow_app), _ctx(org)
    try:
        workflow_id = ours.create(CreateWorkflow(**workflow_body()), ctx).workflow_id
        record_run(follower, workflow_id)
        assert ours.update(workflow_id, UpdateWorkflow(name="edited"), 1, ctx).version == 2
        record_run(follower, workflow_id)
        record_run(follower, workflow_id)
        deleted = ours.delete(workflow_id, 2, ctx)
        assert deleted.version == 3
        assert _events(workflow_app, workflow_id) == [
            "Created",
            "Executed",
            "Updated",
            "Executed",
            "Executed",
            "Deleted",
        ]
        assert deleted.position == workflow_app.event_store.position_of(workflow_id, 6)
    finally:
        follower.close()


def test_two_editors_with_the_same_revision_conflict_even_with_runs_between(
    workflow_app: WorkflowApplication, org: str
) -> None:
    other_app = WorkflowApplication(env=dict(workflow_app.env))
    alice, bob, ctx = WorkflowCommands(workflow_app), WorkflowCommands(other_app), _ctx(org)
    try:
        workflow_id = alice.create(CreateWorkflow(**workflow_body()), ctx).workflow_id
        record_run(other_app, workflow_id)
        assert bob.update(workflow_id, UpdateWorkflow(name="bob"), 1, ctx).version == 2
        record_run(other_app, workflow_id)
        # Alice read revision 1 too; she still keeps it. Bob's edit came first.
        with pytest.raises(VersionConflict) as conflict:
            alice.update(workflow_id, UpdateWorkflow(name="alice"), 1, ctx)
        assert (conflict.value.expected, conflict.value.current) == (1, 2)
        assert alice.get(workflow_id, org).name == "bob"
        assert _events(workflow_app, workflow_id).count("Updated") == 1
    finally:
        other_app.close()


def test_racing_editors_and_runs_one_edit_wins(
    workflow_app: WorkflowApplication, commands: WorkflowCommands, org: str
) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    ctx = _ctx(org)
    workflow_id = commands.create(CreateWorkflow(**workflow_body()), ctx).workflow_id
    follower = WorkflowApplication(env=dict(workflow_app.env))
    done = threading.Event()

    def runs() -> int:
        # One run every few milliseconds, about the runs follower's pace
        # under load (it records a batch of runs per transaction).
        count = 0
        while not done.is_set() and count < 100:
            try:
                record_run(follower, workflow_id)
            except IntegrityError:
                continue  # an edit came first: the follower too reads again
            count += 1
            time.sleep(0.003)
        return count

    def edit(i: int) -> str:
        try:
            commands.update(workflow_id, UpdateWorkflow(name=f"editor {i}"), 1, ctx)
        except VersionConflict as conflict:
            assert conflict.current == 2
            return "conflict"
        return "won"

    try:
        with ThreadPoolExecutor(max_workers=9) as pool:
            running = pool.submit(runs)
            outcomes = list(pool.map(edit, range(8)))
            done.set()
            recorded = running.result()
    finally:
        follower.close()
    assert sorted(outcomes) == ["conflict"] * 7 + ["won"]
    events = _events(workflow_app, workflow_id)
    assert events.count("Updated") == 1 and events.count("Executed") == recorded
    assert commands.get(workflow_id, org).revision == 2


def test_an_edit_that_keeps_losing_to_runs_holds_them_off_and_lands(
    workflow_app: WorkflowApplication, org: str
) -> None:
    # A run recorded the follower's way between every read and its save:
    # after HOLD_RUNS_AFTER losses the edit holds runs off, the next run is
    # refused, and the edit saves on the head it read.
    follower = WorkflowApplication(env=dict(workflow_app.env))
    refused: list[uuid.UUID] = []

    class RunsEverySave(WorkflowCommands):
        def _at_head(self, workflow_id: uuid.UUID, expected: int, ctx: CommandContext) -> Any:
            workflow = super()._at_head(workflow_id, expected, ctx)
            try:
                record_run(follower, workflow_id)
            except IntegrityError:
                refused.append(workflow_id)
            return workflow

    commands, ctx = RunsEverySave(workflow_app), _ctx(org)
    try:
        workflow_id = commands.create(CreateWorkflow(**workflow_body()), ctx).workflow_id
        record_run(follower, workflow_id)  # the kept copy is stale from the start
        result = commands.update(workflow_id, UpdateWorkflow(name="lands"), 1, ctx)
        assert result.version == 2
        assert refused == [workflow_id]
        # The run that made the kept copy stale, then one per read that lost.
        runs = ["Executed"] * (1 + HOLD_RUNS_AFTER - 1)
        assert _events(workflow_app, workflow_id) == ["Created", *runs, "Updated"]
        record_run(follower, workflow_id)  # the hold ended with the save
        assert _events(workflow_app, workflow_id)[-1] == "Executed"
        assert commands.get(workflow_id, org).name == "lands"
    finally:
        follower.close()


def test_a_workflow_whose_runs_win_every_save_is_busy(
    workflow_app: WorkflowApplication, org: str
) -> None:
    # Runs that ignore the edit's hold (no writer does), recorded between
    # every read and its save: the command gives up after SAVE_ATTEMPTS
    # tries (503 to the client) and records nothing.
    follower = WorkflowApplication(env=dict(workflow_app.env))

    class RunsEverySave(WorkflowCommands):
        def _at_head(self, workflow_id: uuid.UUID, expected: int, ctx: CommandContext) -> Any:
            workflow = super()._at_head(workflow_id, expected, ctx)
            record_run(follower, workflow_id, heeding_edits=False)
            return workflow

    commands, ctx = RunsEverySave(workflow_app), _ctx(org)
    try:
        workflow_id = commands.create(CreateWorkflow(**workflow_body()), ctx).workflow_id
        record_run(follower, workflow_id)  # the kept copy is stale from the start
        with pytest.raises(WorkflowBusy):
            commands.update(workflow_id, UpdateWorkflow(name="never"), 1, ctx)
        # One run made the kept copy stale, one more came with each read.
        runs = 1 + SAVE_ATTEMPTS
        assert _events(workflow_app, workflow_id) == ["Created"] + ["Executed"] * runs
    finally:
        follower.close()


def test_a_keyed_retry_after_runs_answers_the_same_revision(
    workflow_app: WorkflowApplication, commands: WorkflowCommands, org: str
) -> None:
    workflow_id = commands.create(CreateWorkflow(**workflow_body()), _ctx(org)).workflow_id
    first = commands.update(workflow_id, UpdateWorkflow(name="x"), 1, _ctx(org, "edit-1"))
    record_run(workflow_app, workflow_id)
    retry = commands.update(workflow_id, UpdateWorkflow(name="x"), 1, _ctx(org, "edit-1"))
    assert retry == first and first.version == 2
    unchanged = commands.update(workflow_id, UpdateWorkflow(name="x"), 2, _ctx(org, "same"))
    record_run(workflow_app, workflow_id)
    again = commands.update(workflow_id, UpdateWorkflow(name="x"), 2, _ctx(org, "same"))
    assert again == unchanged and unchanged.version == 2


def test_revert_names_a_revision(
    workflow_app: WorkflowApplication, commands: WorkflowCommands, org: str
) -> None:
    from commands.models import RevertWorkflow

    ctx = _ctx(org)
    workflow_id = commands.create(CreateWorkflow(**workflow_body("first")), ctx).workflow_id
    record_run(workflow_app, workflow_id)
    commands.update(workflow_id, UpdateWorkflow(name="second"), 1, ctx)
    record_run(workflow_app, workflow_id)
    reverted = commands.revert(workflow_id, RevertWorkflow(to_version=1), 2, ctx)
    assert reverted.version == 3 and commands.get(workflow_id, org).name == "first"
    assert commands.get(workflow_id, org, revision=2).name == "second"
    with pytest.raises(NoSuchVersion):
        commands.revert(workflow_id, RevertWorkflow(to_version=4), 3, ctx)


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
    steps=st.lists(st.one_of(_updates, st.just("delete"), st.just("run")), min_size=1, max_size=8),
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
    runs = 0
    for step in steps:
        if step == "run":
            # A run recorded between two commands, as the runs follower does:
            # the next command's If-Match (the revision it saw) still holds.
            record_run(workflow_app, result.workflow_id)
            runs += 1
            continue
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

    # A fresh application without caches replays the stored events: each
    # revision as the commands left it, and the head as the live state.
    fresh = WorkflowApplication(env=dict(workflow_app.env))
    try:
        replaying = WorkflowCommands(fresh)
        for revision, state in expected.items():
            replayed = replaying.get(result.workflow_id, org, revision=revision)
            assert replayed.revision == revision
            assert replayed.org_id == org and replayed.created_by == "apikey:test"
            assert {**replayed.definition(), "deleted": replayed.deleted} == state
        head, live = replaying.get(result.workflow_id, org), commands.get(result.workflow_id, org)
        assert (head.revision, head.version, head.runs) == (live.revision, live.version, runs)
        assert head.revision == result.version == max(expected)
        assert {**head.definition(), "deleted": head.deleted} == expected[head.revision]
    finally:
        fresh.close()
