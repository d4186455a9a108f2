"""The scheduler's index: which workflows are active with which schedule triggers, from the log.

Kept in memory by every scheduler process (the active one and its
standbys, so a failover starts with a current index), by reading the
workflow events the index depends on (Created, Updated, Activated,
Deactivated, Deleted) in log order. There is no table of schedules that
could disagree with the log: a process builds its index from position 0
when it starts. It is only a list of candidates; before firing, the
scheduler loads the workflow itself from the log (``commands/schedules.py``).

Bounded: each read covers at most ``span`` positions of the log and a call
reads at most ``max_reads`` of them, so a long log is indexed over several
ticks. Positions commit in order (the recorder's table lock), so
everything up to the head read at the start of a call is there to read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import structlog
from eventsourcing.utils import get_topic

from commands.application import WorkflowApplication
from domain.schedule import Schedule
from domain.triggers import schedule_triggers
from domain.workflow import (
    WorkflowActivatedEvent,
    WorkflowCreatedEvent,
    WorkflowDeactivatedEvent,
    WorkflowDeletedEvent,
    WorkflowUpdatedEvent,
)
from infrastructure.eventstore import EVENTS_TABLE, decode_event

log = structlog.get_logger("reporunner.scheduler")

_TOPICS = [
    get_topic(cls)
    for cls in (
        WorkflowCreatedEvent,
        WorkflowUpdatedEvent,
        WorkflowActivatedEvent,
        WorkflowDeactivatedEvent,
        WorkflowDeletedEvent,
    )
]


@dataclass
class IndexedWorkflow:
    org_id: str
    active: bool = False
    schedules: dict[str, Schedule] = field(default_factory=dict)


@dataclass(frozen=True)
class IndexedTrigger:
    workflow_id: UUID
    node_id: str
    schedule: Schedule


class ScheduleIndex:
    def __init__(
        self, app: WorkflowApplication, *, span: int = 50_000, max_reads: int = 20
    ) -> None:
        self.app = app
        self.span = span
        self.max_reads = max_reads
        self.position = 0
        self.workflows: dict[UUID, IndexedWorkflow] = {}
        self.caught_up = False
        """Whether the last ``catch_up`` reached the head it saw."""

    def catch_up(self) -> set[UUID]:
        """Read the log's new workflow events; return the workflows they changed."""
        changed: set[UUID] = set()
        with self.app.event_store.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"SELECT max(notification_id) AS head FROM {EVENTS_TABLE}")
            row: Any = curs.fetchone()
            head = int(row["head"] or 0)
            for _ in range(self.max_reads):
                if self.position >= head:
                    break
                upto = min(head, self.position + self.span)
                curs.execute(
                    "SELECT notification_id, originator_id, originator_version, topic, state "
                    f"FROM {EVENTS_TABLE} WHERE notification_id > %s AND notification_id <= %s "
                    "AND topic = ANY(%s) ORDER BY notification_id",
                    (self.position, upto, _TOPICS),
                )
                for found in curs.fetchall():
                    try:
                        event = decode_event(
                            self.app.mapper,
                            found["originator_id"],
                            found["originator_version"],
                            found["topic"],
                            found["state"],
                        )
                        self._apply(event)
                    except Exception as exc:
                        # One event nobody can read (the followers dead-letter it)
                        # must not stop every schedule: the index goes on without it.
                        log.error(
                            "scheduler index cannot apply an event; going on",
                            position=found["notification_id"],
                            error=f"{type(exc).__name__}: {exc}",
                        )
                    changed.add(found["originator_id"])
                self.position = upto
        self.caught_up = self.position >= head
        return changed

    def triggers(self) -> list[IndexedTrigger]:
        """Every schedule trigger of an active workflow."""
        return [
            IndexedTrigger(workflow_id, node_id, schedule)
            for workflow_id, workflow in self.workflows.items()
            if workflow.active
            for node_id, schedule in workflow.schedules.items()
        ]

    def _apply(self, event: Any) -> None:
        workflow_id = event.originator_id
        if isinstance(event, WorkflowCreatedEvent):
            self.workflows[workflow_id] = IndexedWorkflow(org_id=event.meta["org_id"])
            self._set_nodes(workflow_id, event.nodes)
            return
        known = self.workflows.get(workflow_id)
        if known is None:
            return
        if isinstance(event, WorkflowDeletedEvent):
            del self.workflows[workflow_id]
        elif isinstance(event, WorkflowActivatedEvent):
            known.active = True
        elif isinstance(event, WorkflowDeactivatedEvent):
            known.active = False
        elif "nodes" in event.changes:
            self._set_nodes(workflow_id, event.changes["nodes"])

    def _set_nodes(self, workflow_id: UUID, nodes: list[dict[str, Any]]) -> None:
        try:
            triggers = schedule_triggers(nodes)
        except ValueError as exc:
            # Accepted once by rules that changed since: the scheduler loads
            # the workflow itself before firing, so leaving it out is safe.
            log.warning("schedule trigger unreadable", workflow_id=str(workflow_id), error=str(exc))
            triggers = []
        self.workflows[workflow_id].schedules = {t.node_id: t.schedule for t in triggers}
