"""History from the event store itself (not from views): who changed what, when.

- ``workflow_history``: a workflow's events in order, each with an RFC 6902
  JSON Patch from the state before it to the state after it.
- ``workflow_as_of``: a workflow exactly as it was at a revision or instant.
- ``org_events``: an organisation's events in log order, filtered.

The state a patch compares is the workflow's definition plus ``deleted`` and
``active``: what a reader of the workflow sees (``Activated`` is a replace
of ``/active``, and leaves the revision). ``Executed`` changes none of it, so its
patch is empty and its ``revision`` is the one before it; the run is in the
entry's ``execution`` field, with the revision that ran.

Clients speak revisions (a workflow's ``version``); each event also has its
stream version (``version`` in an entry, as in the organisation's log and on
the bus), which is what a history cursor counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import jsonpatch
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.utils import get_topic

from commands.application import WorkflowApplication
from commands.errors import WorkflowNotFound
from domain.project import Project
from domain.timetable import Timetable
from domain.workflow import DEFINITION_FIELDS, REVISION_EVENTS, Workflow
from infrastructure.eventstore import EVENTS_TABLE, decode_event

MAX_PAGE = 500
_REVISION_TOPICS = [get_topic(cls) for cls in REVISION_EVENTS]


def version_at_revision(app: WorkflowApplication, workflow_id: UUID, revision: int) -> int | None:
    """The stream version of the event that made ``revision``; None if there is none.

    The revision-th definition-changing event of the stream (runs skipped),
    found by the log's own key order.
    """
    if revision < 1:
        return None
    with app.event_store.datastore.get_connection() as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT originator_version FROM {EVENTS_TABLE} "
            "WHERE originator_id = %s AND topic = ANY(%s) "
            "ORDER BY originator_version OFFSET %s LIMIT 1",
            (workflow_id, _REVISION_TOPICS, revision - 1),
        )
        row = cur.fetchone()
    return None if row is None else int(row["originator_version"])


@dataclass(frozen=True)
class HistoryEntry:
    position: int
    aggregate_id: UUID
    version: int
    type: str
    timestamp: datetime
    actor: str
    correlation_id: str
    org_id: str
    changes: list[dict[str, Any]] | None
    extra: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "position": self.position,
            "aggregate_id": str(self.aggregate_id),
            "version": self.version,
            "type": self.type,
            "timestamp": self.timestamp.isoformat(),
            "actor": self.actor,
            "correlation_id": self.correlation_id,
        }
        if self.changes is not None:
            body["changes"] = self.changes
        return body | self.extra


def event_type(event: Any) -> str:
    """``Workflow.Updated``: the aggregate's and the event's class names."""
    return type(event).__qualname__


class History:
    def __init__(self, app: WorkflowApplication) -> None:
        self.app = app

    # -- one workflow ------------------------------------------------------------------

    def workflow_history(
        self,
        workflow_id: UUID,
        org_id: str,
        after_version: int,
        limit: int,
        project_id: UUID | None = None,
    ) -> list[HistoryEntry]:
        self._workflow(workflow_id, org_id, project_id)  # 404 unless it is the caller's
        rows = self._select(
            "WHERE originator_id = %s AND originator_version > %s "
            "ORDER BY originator_version LIMIT %s",
            (workflow_id, after_version, limit),
        )
        # The state before the page's first event, then each event applied to it.
        workflow: Any = (
            self.app.repository.get(workflow_id, version=after_version) if after_version else None
        )
        entries = []
        for position, event in rows:
            workflow, changes = apply_with_patch(workflow, event)
            extra: dict[str, Any] = {"revision": workflow.revision}
            if event_type(event) == "Workflow.Created" and getattr(event, "origin", None):
                # Made from a template (which one, from which revision) or imported.
                extra["origin"] = event.origin
            if event_type(event) == "Workflow.Executed":
                extra["execution"] = {
                    "id": event.execution_id,
                    "status": event.status,
                    # None for runs recorded before runs kept these.
                    "revision": getattr(event, "revision", None),
                    "trigger": getattr(event, "trigger", None),
                    "retry_of": getattr(event, "retry_of", None),
                    "attempt": getattr(event, "attempt", None),
                }
            extra |= _tenancy(event)
            entries.append(_entry(position, event, changes, extra))
        return entries

    def workflow_as_of(
        self,
        workflow_id: UUID,
        org_id: str,
        *,
        revision: int | None = None,
        as_of: datetime | None = None,
        project_id: UUID | None = None,
    ) -> Workflow:
        """The workflow as ``revision`` made it, or as it stood at the instant ``as_of``.

        ``WorkflowNotFound`` if it did not exist (yet) then, or if the key's
        project ``project_id`` does not see it now.
        """
        current = self._workflow(workflow_id, org_id, project_id)
        if revision is not None:
            # Past the head there is nothing to look up (nor any bigint to send).
            version = (
                version_at_revision(self.app, workflow_id, revision)
                if revision <= current.revision
                else None
            )
            if version is None:
                raise WorkflowNotFound(workflow_id)
            found: object = self.app.repository.get(workflow_id, version=version)
            assert isinstance(found, Workflow)
            return found
        assert as_of is not None
        workflow: Any = None
        for _, event in self._select(
            "WHERE originator_id = %s ORDER BY originator_version", (workflow_id,)
        ):
            if event.timestamp > as_of:
                break
            workflow = event.mutate(workflow)
        if workflow is None:
            raise WorkflowNotFound(workflow_id)
        return workflow  # type: ignore[no-any-return]

    # -- an organisation's log -------------------------------------------------------

    def org_events(
        self,
        org_id: str,
        *,
        after_position: int,
        limit: int,
        type_: str | None = None,
        actor: str | None = None,
        aggregate_id: UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        project_id: UUID | None = None,
    ) -> list[HistoryEntry]:
        """The organisation's events after ``after_position``, in log order.

        Organisation, actor and aggregate filter in SQL (the stored state is
        JSON) and again on the decoded events (see ``meta_is``); type and
        time are checked on the decoded events, reading on until ``limit``
        entries are found or the log ends. ``project_id``: only the events
        of aggregates that project sees now (``ProjectVisibility``).
        """
        visible = None if project_id is None else ProjectVisibility(self.app, org_id, project_id)
        where = f"WHERE notification_id > %s AND {meta_is('org_id')}"
        params: list[Any] = [org_id]
        if actor is not None:
            where += f" AND {meta_is('actor')}"
            params.append(actor)
        if aggregate_id is not None:
            where += " AND originator_id = %s"
            params.append(aggregate_id)
        entries: list[HistoryEntry] = []
        position = after_position
        while len(entries) < limit:
            rows = self._select(
                where + " ORDER BY notification_id LIMIT %s", (position, *params, MAX_PAGE)
            )
            for row_position, event in rows:
                position = row_position
                if event.meta["org_id"] != org_id:
                    continue
                if actor is not None and event.meta["actor"] != actor:
                    continue
                if type_ is not None and event_type(event) != type_:
                    continue
                if since is not None and event.timestamp < since:
                    continue
                if until is not None and event.timestamp >= until:
                    continue
                if visible is not None and not visible.sees(event.originator_id):
                    continue
                extra = _decision(event) | _tenancy(event)
                entries.append(_entry(row_position, event, None, extra))
                if len(entries) == limit:
                    break
            if len(rows) < MAX_PAGE:
                break
        return entries

    # -- reading ---------------------------------------------------------------------

    def _workflow(self, workflow_id: UUID, org_id: str, project_id: UUID | None = None) -> Workflow:
        try:
            workflow: object = self.app.repository.get(workflow_id)
        except AggregateNotFoundError:
            raise WorkflowNotFound(workflow_id) from None
        if not isinstance(workflow, Workflow) or workflow.org_id != org_id:
            raise WorkflowNotFound(workflow_id)
        if project_id is not None and workflow.role_of(project_id) is None:
            raise WorkflowNotFound(workflow_id)
        return workflow

    def _select(self, where: str, params: tuple[Any, ...]) -> list[tuple[int, Any]]:

        with self.app.event_store.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                f"FROM {EVENTS_TABLE} {where}",
                params,
            )
            rows = cur.fetchall()
        return [
            (
                int(row["notification_id"]),
                decode_event(
                    self.app.mapper,
                    row["originator_id"],
                    row["originator_version"],
                    row["topic"],
                    row["state"],
                ),
            )
            for row in rows
        ]


_STATE = "convert_from(state, 'UTF8')"
# Text jsonb refuses that the log may hold from before the value contract: a
# \u0000 escape, NaN or Infinity (Python's json writes them). Casting such an
# event to jsonb would fail the whole query, for every organisation.
_MAYBE_NOT_JSONB = " OR ".join(
    f"strpos({_STATE}, '{text}') > 0" for text in ("\\u0000", "NaN", "Infinity")
)


def meta_is(field: str) -> str:
    """SQL: the event's ``meta.<field>`` equals the next parameter.

    Rows whose text might not be jsonb (a cheap, conservative test) pass
    this filter, and are filtered by ``org_events`` once decoded.
    """
    value = f"{_STATE}::jsonb #>> '{{meta,{field}}}'"
    return f"(CASE WHEN {_MAYBE_NOT_JSONB} THEN true ELSE {value} = %s END)"


# What a timetable's decision says (``domain/timetable.py``): the instant and why.
_DECISION_FIELDS = (
    "workflow_id",
    "node_id",
    "instant",
    "execution_id",
    "revision",
    "buffered",
    "after",
    "through",
    "reason",
)


def _decision(event: Any) -> dict[str, Any]:
    """A schedule's decision in the organisation's log carries its instant and reason."""
    if not isinstance(event, Timetable.Event):
        return {}
    fields = {name: getattr(event, name) for name in _DECISION_FIELDS if hasattr(event, name)}
    return {"schedule": fields} if fields else {}


class ProjectVisibility:
    """Which aggregates a project's key sees, as they are now (one audit page's worth).

    A workflow: its own project's or shared with it. A project: itself. Any
    other aggregate (an execution, a schedule's timetable): if it names a
    workflow the project sees. Membership now decides, as in every view: a
    workflow moved away takes its past events with it.
    """

    def __init__(self, app: WorkflowApplication, org_id: str, project_id: UUID) -> None:
        self.app = app
        self.org_id = org_id
        self.project_id = project_id
        self._known: dict[UUID, bool] = {}

    def sees(self, aggregate_id: UUID) -> bool:
        known = self._known.get(aggregate_id)
        if known is None:
            known = self._known[aggregate_id] = self._decide(aggregate_id, depth=0)
        return known

    def _decide(self, aggregate_id: UUID, depth: int) -> bool:
        try:
            aggregate: object = self.app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return False
        if getattr(aggregate, "org_id", None) != self.org_id:
            return False
        if isinstance(aggregate, Workflow):
            return aggregate.role_of(self.project_id) is not None
        if isinstance(aggregate, Project):
            return aggregate.id == self.project_id
        workflow_id = getattr(aggregate, "workflow_id", None)
        if workflow_id is None or depth > 0:
            return False
        return self.sees(UUID(str(workflow_id)))


def _tenancy(event: Any) -> dict[str, Any]:
    """What a move or a share recorded, for history and audit entries."""
    kind = event_type(event)
    if kind == "Workflow.Moved":
        return {
            "move": {"from_project_id": event.from_project_id, "to_project_id": event.project_id}
        }
    if kind == "Workflow.Shared":
        return {"share": {"project_id": event.project_id, "role": event.role}}
    if kind == "Workflow.Unshared":
        return {"share": {"project_id": event.project_id, "role": None}}
    return {}


def apply_with_patch(workflow: Any, event: Any) -> tuple[Workflow, list[dict[str, Any]]]:
    """``event`` applied to ``workflow`` (None before its first event; changed in
    place), and the RFC 6902 JSON Patch of what a reader of the workflow sees change."""
    before = _visible_state(workflow)
    workflow = event.mutate(workflow)
    after = _visible_state(workflow)
    # Field by field, in the document's order, and only the fields that differ
    # (plain equality is fast; jsonpatch walking a whole definition is not). An
    # added field's value is the workflow's own: apply methods replace fields,
    # never change them in place (domain/workflow.py), so it stays as it was.
    changes: list[dict[str, Any]] = []
    for name, value in after.items():
        path = "/" + name
        if name not in before:
            changes.append({"op": "add", "path": path, "value": value})
        elif before[name] != value:
            changes += jsonpatch.make_patch({name: before[name]}, {name: value}).patch
    changes += [{"op": "remove", "path": "/" + name} for name in before if name not in after]
    return workflow, changes


def _visible_state(workflow: Any) -> dict[str, Any]:
    if workflow is None:
        return {}
    return {
        **{name: getattr(workflow, name) for name in DEFINITION_FIELDS},
        "deleted": workflow.deleted,
        "active": workflow.active,
    }


def _entry(
    position: int, event: Any, changes: list[dict[str, Any]] | None, extra: dict[str, Any]
) -> HistoryEntry:
    meta = event.meta
    return HistoryEntry(
        position=position,
        aggregate_id=event.originator_id,
        version=event.originator_version,
        type=event_type(event),
        timestamp=event.timestamp,
        actor=meta["actor"],
        correlation_id=meta["correlation_id"],
        org_id=meta["org_id"],
        changes=changes,
        extra=extra,
    )
