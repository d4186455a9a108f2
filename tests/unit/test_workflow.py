"""The Workflow aggregate, in memory: no database."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import WorkflowDeleted, WorkflowInvalid
from domain.meta import EventMeta
from domain.workflow import Workflow
from tests.helpers import noop, trigger, workflow_body

META = EventMeta(org_id="acme", actor="apikey:1", correlation_id="req-1", idempotency_key="k")


def _new(**overrides: Any) -> Workflow:
    return Workflow.create(
        workflow_id=uuid.uuid4(), definition=workflow_body(**overrides), meta=META
    )


def _replay(workflow: Workflow, events: list[Any]) -> Workflow:
    state: Workflow | None = None
    for e in events:
        state = e.mutate(state)
    assert state is not None
    return state


def test_create_records_definition_and_who() -> None:
    workflow = _new(name="hello", tags=["a"])
    [created] = workflow.collect_events()
    assert type(created).__qualname__ == "Workflow.Created"
    assert created.meta == {
        "org_id": "acme",
        "actor": "apikey:1",
        "correlation_id": "req-1",
        "causation_id": None,
        "idempotency_key": "k",
    }
    assert workflow.version == 1 and workflow.org_id == "acme"
    assert workflow.name == "hello" and workflow.tags == ["a"]
    assert workflow.created_by == workflow.updated_by == "apikey:1"
    assert not workflow.deleted


def test_optional_fields_default_to_empty() -> None:
    workflow = Workflow.create(
        workflow_id=uuid.uuid4(), definition={"name": "x", "nodes": [trigger()]}, meta=META
    )
    assert (workflow.description, workflow.connections, workflow.tags, workflow.settings) == (
        "",
        [],
        [],
        {},
    )


def test_invalid_definition_is_refused_before_any_event() -> None:
    with pytest.raises(WorkflowInvalid) as err:
        Workflow.create(workflow_id=uuid.uuid4(), definition=workflow_body(name=""), meta=META)
    assert any(p.loc == "name" for p in err.value.problems)


def test_update_records_only_what_changed() -> None:
    workflow = _new(name="a", description="same")
    workflow.collect_events()
    other = EventMeta(org_id="acme", actor="apikey:2", correlation_id="req-2")
    assert workflow.update({"name": "b", "description": "same"}, other)
    [updated] = workflow.collect_events()
    assert updated.changes == {"name": "b"}
    assert workflow.name == "b" and workflow.updated_by == "apikey:2" and workflow.version == 2


def test_update_that_changes_nothing_records_nothing() -> None:
    workflow = _new(name="a")
    workflow.collect_events()
    assert not workflow.update({"name": "a"}, META)
    assert workflow.collect_events() == [] and workflow.version == 1


def test_invalid_update_leaves_state_untouched() -> None:
    workflow = _new()
    workflow.collect_events()
    with pytest.raises(WorkflowInvalid):
        workflow.update({"nodes": [noop("a")]}, META)  # no trigger, and start is dangling
    assert workflow.collect_events() == [] and workflow.nodes[0]["id"] == "start"


def test_deleted_workflow_accepts_nothing() -> None:
    workflow = _new()
    workflow.delete(META)
    assert workflow.deleted and workflow.version == 2
    with pytest.raises(WorkflowDeleted):
        workflow.update({"name": "again"}, META)
    with pytest.raises(WorkflowDeleted):
        workflow.delete(META)


def test_events_replay_to_the_same_state() -> None:
    workflow = _new(name="a")
    workflow.update({"tags": ["x"], "settings": {"timeout_ms": 5}}, META)
    workflow.delete(META)
    replayed = _replay(workflow, workflow.collect_events())
    assert replayed.definition() == workflow.definition()
    assert (replayed.version, replayed.deleted, replayed.id) == (3, True, workflow.id)


_CHANGES = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text("abc", min_size=1, max_size=5),
        "tags": st.lists(st.text("xyz", min_size=1, max_size=3), max_size=3, unique=True),
        "settings": st.sampled_from([{}, {"timeout_ms": 1000}]),
        "nodes": st.integers(0, 3).map(
            lambda n: [trigger(), noop("a")] + [noop(f"n{i}") for i in range(n)]
        ),
    },
)


@given(changes=st.lists(_CHANGES, max_size=5), delete=st.booleans())
def test_commands_on_a_copy_leave_the_original_as_it_was(
    changes: list[dict[str, Any]], delete: bool
) -> None:
    # Caches hand out copies (``Workflow.__deepcopy__`` shares the values), so
    # whatever a command does to its copy must not reach the cached original.
    original = _new(settings={"timeout_ms": 5}, tags=["t"])
    original.collect_events()
    before = (json.dumps(original.definition(), sort_keys=True), original.version)
    clone = copy.deepcopy(original)
    for change in changes:
        clone.update(change, META)
    if delete:
        clone.delete(META)
    assert (json.dumps(original.definition(), sort_keys=True), original.version) == before
    assert not original.deleted and original.collect_events() == []
    assert len(clone.collect_events()) == clone.version - original.version


# --- revisions: definition changes count, runs do not --------------------------------


def _run(workflow: Workflow) -> None:
    workflow.record_execution(uuid.uuid4(), "succeeded", workflow.revision, META)


def test_the_revision_moves_on_definition_changes_and_not_on_runs() -> None:
    workflow = _new(name="a")
    assert (workflow.revision, workflow.version) == (1, 1)
    _run(workflow)
    assert (workflow.revision, workflow.version, workflow.runs) == (1, 2, 1)
    workflow.update({"name": "b"}, META)
    assert (workflow.revision, workflow.version) == (2, 3)
    _run(workflow)
    workflow.delete(META)
    assert (workflow.revision, workflow.version, workflow.runs) == (3, 5, 2)
    executed = [e for e in workflow.collect_events() if type(e).__name__ == "Executed"]
    assert [e.revision for e in executed] == [1, 2]  # each run says which revision ran


def test_an_executed_event_from_before_revisions_replays() -> None:
    # Executed events recorded before runs kept their revision have no such
    # field: replay takes the default and counts the revision all the same.
    workflow = _new()
    _run(workflow)
    workflow.update({"name": "later"}, META)
    events = workflow.collect_events()
    old = object.__new__(type(events[1]))
    old.__dict__.update({k: v for k, v in events[1].__dict__.items() if k != "revision"})
    assert not hasattr(old, "revision")
    replayed = _replay(workflow, [events[0], old, events[2]])
    assert (replayed.revision, replayed.version, replayed.runs) == (2, 3, 1)


@given(
    steps=st.lists(st.one_of(_CHANGES, st.just("run")), max_size=8),
    delete=st.booleans(),
)
def test_replaying_the_events_gives_the_live_revision_and_state(
    steps: list[Any], delete: bool
) -> None:
    workflow = _new(settings={"timeout_ms": 5}, tags=["t"])
    definition_events = 1
    for step in steps:
        if step == "run":
            _run(workflow)
        else:
            definition_events += workflow.update(step, META)
    if delete:
        workflow.delete(META)
        definition_events += 1
    events = workflow.collect_events()
    replayed = _replay(workflow, events)
    assert workflow.revision == definition_events
    assert workflow.runs == steps.count("run") and workflow.version == len(events)
    assert (replayed.revision, replayed.version, replayed.runs, replayed.deleted) == (
        workflow.revision,
        workflow.version,
        workflow.runs,
        workflow.deleted,
    )
    assert replayed.definition() == workflow.definition()
