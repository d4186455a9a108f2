"""The Project aggregate, and a workflow's project, moves and shares (pure domain)."""

from __future__ import annotations

import uuid

import pytest
from eventsourcing.domain import Snapshot

from domain.errors import WorkflowDeleted, WorkflowInvalid
from domain.meta import EventMeta
from domain.project import (
    DefaultProjectPermanent,
    Project,
    ProjectArchived,
    default_project_id,
)
from domain.workflow import Workflow
from tests.helpers import workflow_body

META = EventMeta(org_id="acme", actor="apikey:t", correlation_id="c")


def _workflow(project_id: uuid.UUID | None = None) -> Workflow:
    body = workflow_body()
    return Workflow.create(
        workflow_id=uuid.uuid4(), definition=body, meta=META, project_id=project_id
    )


def _replayed(workflow: Workflow) -> Workflow:
    replayed = None
    for event in workflow.collect_events():
        replayed = event.mutate(replayed)
    assert isinstance(replayed, Workflow)
    return replayed


def test_the_default_project_is_the_same_id_for_an_organisation_everywhere() -> None:
    assert default_project_id("acme") == default_project_id("acme")
    assert default_project_id("acme") != default_project_id("other")


def test_a_workflow_without_a_project_is_in_the_default_one_and_records_none() -> None:
    workflow = _workflow()
    assert workflow.project_id == str(default_project_id("acme"))
    (created,) = workflow.pending_events
    assert created.project_id is None  # as every Created from before projects
    explicit = _workflow(default_project_id("acme"))
    assert explicit.pending_events[0].project_id is None


def test_a_created_event_from_before_projects_replays_into_the_default_project() -> None:
    workflow = _workflow()
    (created,) = workflow.collect_events()
    del created.__dict__["project_id"]  # the state such an event has in the log
    replayed = created.mutate(None)
    assert isinstance(replayed, Workflow)
    assert (replayed.project_id, replayed.shares) == (str(default_project_id("acme")), {})


def test_a_snapshot_from_before_projects_is_upcast_into_the_default_project() -> None:
    workflow = _replayed(_workflow())
    snapshot = Snapshot.take(workflow)
    state = dict(snapshot.state)
    for field in ("project_id", "shares", "class_version"):
        state.pop(field, None)
    old = Snapshot(
        originator_id=snapshot.originator_id,
        originator_version=snapshot.originator_version,
        timestamp=snapshot.timestamp,
        topic=snapshot.topic,
        state=state,
    )
    restored = old.mutate(None)
    assert isinstance(restored, Workflow)
    assert (restored.project_id, restored.shares) == (str(default_project_id("acme")), {})


def test_move_and_shares_replay_to_the_same_membership() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    workflow = _workflow(a)
    assert workflow.share(b, "viewer", META)
    assert not workflow.share(b, "viewer", META)  # already exactly that: nothing recorded
    assert workflow.share(b, "editor", META)
    assert workflow.role_of(a) == "owner" and workflow.role_of(b) == "editor"
    assert workflow.move(b, META)  # the grantee now owns it: its share is gone
    assert (workflow.project_id, workflow.shares) == (str(b), {})
    assert not workflow.move(b, META)
    assert workflow.share(a, "viewer", META)
    assert workflow.unshare(a, META) and not workflow.unshare(a, META)
    assert workflow.revision == 1  # membership is no definition change
    replayed = _replayed(workflow)
    assert (replayed.project_id, replayed.shares, replayed.revision) == (str(b), {}, 1)


def test_a_workflow_is_not_shared_with_its_own_project_nor_changed_once_deleted() -> None:
    a = uuid.uuid4()
    workflow = _workflow(a)
    with pytest.raises(WorkflowInvalid):
        workflow.share(a, "viewer", META)
    with pytest.raises(ValueError):
        workflow.share(uuid.uuid4(), "owner", META)
    workflow.delete(META)
    with pytest.raises(WorkflowDeleted):
        workflow.move(uuid.uuid4(), META)


def test_a_project_is_renamed_and_archived_and_then_takes_nothing() -> None:
    project = Project.create(project_id=uuid.uuid4(), name="A", description="", meta=META)
    assert project.rename("B", None, META)
    assert not project.rename("B", "", META)
    assert project.archive(META) and not project.archive(META)
    with pytest.raises(ProjectArchived):
        project.rename("C", None, META)
    replayed = None
    for event in project.collect_events():
        replayed = event.mutate(replayed)
    assert isinstance(replayed, Project)
    assert (replayed.name, replayed.archived) == ("B", True)


def test_the_default_project_is_never_archived() -> None:
    project = Project.create(
        project_id=default_project_id("acme"), name="Default", description="", meta=META
    )
    with pytest.raises(DefaultProjectPermanent):
        project.archive(META)
