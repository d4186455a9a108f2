"""The workflows projection: current definitions, and one document per version.

Both collections are kept by one projection (one tracking position), so a
version document is always built from the workflow document as it stood at
that event.

A document's ``version`` is the definition's revision (``domain/workflow.py``):
1 at ``Created``, +1 at each ``Updated`` and ``Deleted``. ``Executed`` (a run)
leaves it, so it is what the write side compares ``If-Match`` with, and
``workflow_versions`` holds exactly one document per revision. ``Activated``
and ``Deactivated`` leave it too: they set ``active`` (false at ``Created``
and again at ``Deleted``) and make no version document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from domain.project import default_project_id
from domain.workflow import (
    DEFINITION_FIELDS,
    WorkflowActivatedEvent,
    WorkflowCreatedEvent,
    WorkflowDeactivatedEvent,
    WorkflowDeletedEvent,
    WorkflowExecutedEvent,
    WorkflowMovedEvent,
    WorkflowSharedEvent,
    WorkflowUnsharedEvent,
    WorkflowUpdatedEvent,
)
from projections.store import Document, ViewBatch
from projections.updates import apply_update

WORKFLOWS = "workflows"
VERSIONS = "workflow_versions"


class WorkflowsProjection:
    name: str = "workflows"
    collections: tuple[str, ...] = (WORKFLOWS, VERSIONS)
    write_once: tuple[str, ...] = (VERSIONS,)  # one per revision, never read back
    topics: tuple[type, ...] = (
        WorkflowCreatedEvent,
        WorkflowUpdatedEvent,
        WorkflowDeletedEvent,
        WorkflowExecutedEvent,
        WorkflowActivatedEvent,
        WorkflowDeactivatedEvent,
        WorkflowMovedEvent,
        WorkflowSharedEvent,
        WorkflowUnsharedEvent,
    )

    def partition(self, originator_id: Any, state: bytes) -> str:
        """Every document is the workflow's own (rebuilds load by this key in parallel)."""
        return str(originator_id)

    def prefetch(self, events: Sequence[Any], view: ViewBatch) -> None:
        view.prefetch(WORKFLOWS, [str(e.originator_id) for e in events])

    def apply(self, event: Any, position: int, view: ViewBatch) -> None:
        workflow_id = str(event.originator_id)
        at = event.timestamp
        at_text = at.isoformat()
        actor = event.meta["actor"]
        if isinstance(event, WorkflowCreatedEvent):
            data: dict[str, Any] = {
                "id": workflow_id,
                **{name: getattr(event, name) for name in DEFINITION_FIELDS},
                "version": 1,
                "deleted": False,
                "active": False,
                "active_since": None,
                "runs": 0,
                "last_execution": None,
                "created_at": at_text,
                "created_by": actor,
                "updated_at": at_text,
                "updated_by": actor,
                # No project in the event: the organisation's default (domain/project.py).
                "project_id": getattr(event, "project_id", None)
                or str(default_project_id(event.meta["org_id"])),
                "shares": {},
            }
            current = Document(
                id=workflow_id,
                org_id=event.meta["org_id"],
                data=data,
                version=1,
                position=position,
                created=at,
                updated=at,
            )
            changed = list(DEFINITION_FIELDS)
        else:
            existing = view.get(WORKFLOWS, workflow_id)
            if existing is None:
                raise LookupError(f"{type(event).__qualname__} for unknown workflow {workflow_id}")
            if isinstance(event, WorkflowExecutedEvent):
                # A run is part of the workflow's history but changes no
                # definition: the revision stays, and no version document.
                run = {"id": event.execution_id, "status": event.status, "at": at_text}
                data = apply_update(
                    existing.data, {"$set": {"last_execution": run}, "$inc": {"runs": 1}}
                )
                view.put(WORKFLOWS, replace(existing, data=data, position=position))
                return
            if isinstance(event, WorkflowMovedEvent | WorkflowSharedEvent | WorkflowUnsharedEvent):
                # Membership, not definition: no new revision, no version document.
                view.put(
                    WORKFLOWS,
                    replace(existing, data=_membership(existing.data, event), position=position),
                )
                return
            if isinstance(event, WorkflowActivatedEvent | WorkflowDeactivatedEvent):
                # Triggers on or off: no definition change, so no new revision.
                # ``updated_*`` stay the definition's; who switched is in history.
                active = isinstance(event, WorkflowActivatedEvent)
                switch = {"active": active, "active_since": at_text if active else None}
                data = apply_update(existing.data, {"$set": switch})
                view.put(WORKFLOWS, replace(existing, data=data, position=position))
                return
            changes = dict(event.changes) if isinstance(event, WorkflowUpdatedEvent) else {}
            if isinstance(event, WorkflowDeletedEvent):
                changes["deleted"] = True
            revision = existing.version + 1
            update: dict[str, Any] = {
                **changes,
                "version": revision,
                "updated_at": at_text,
                "updated_by": actor,
            }
            if isinstance(event, WorkflowDeletedEvent):
                update |= {"active": False, "active_since": None}  # triggers gone with it
            current = Document(
                id=workflow_id,
                org_id=existing.org_id,
                data=apply_update(existing.data, {"$set": update}),
                version=revision,
                position=position,
                created=existing.created,
                updated=at,
            )
            changed = sorted(changes)
        view.put(WORKFLOWS, current)
        view.put(VERSIONS, _version_document(current, event, changed))


def _membership(data: dict[str, Any], event: Any) -> dict[str, Any]:
    """The document after a move or a (un)share: ``project_id`` and ``shares``."""
    shares = dict(data.get("shares") or {})
    if isinstance(event, WorkflowMovedEvent):
        shares.pop(event.project_id, None)
        return apply_update(data, {"$set": {"project_id": event.project_id, "shares": shares}})
    if isinstance(event, WorkflowSharedEvent):
        shares[event.project_id] = event.role
    else:
        shares.pop(event.project_id, None)
    return apply_update(data, {"$set": {"shares": shares}})


def _version_document(workflow: Document, event: Any, changed: list[str]) -> Document:
    data = {
        "workflow_id": workflow.id,
        "version": workflow.version,
        "event": type(event).__name__,
        "changed": changed,
        **{name: workflow.data[name] for name in DEFINITION_FIELDS},
        "deleted": workflow.data["deleted"],
        "at": workflow.data["updated_at"],
        "by": workflow.data["updated_by"],
    }
    return Document(
        id=f"{workflow.id}:{workflow.version}",
        org_id=workflow.org_id,
        data=data,
        version=workflow.version,
        position=workflow.position,
        created=workflow.updated,
        updated=workflow.updated,
    )
