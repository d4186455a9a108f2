"""Record each finished execution in its workflow's history, from the log.

A process manager: it follows the log, and for every execution that ended
(``Succeeded``, ``Failed``, ``Canceled``, ``Crashed``) appends ``Executed`` to
the workflow. Doing this here rather than in the same transaction as the
execution's end keeps the hot path free of the workflow aggregate: runs of a
much-used workflow would otherwise all contend for its next version.

Exactly once: the batch's ``Executed`` events and the move of its tracking
position commit in one transaction, and the move only succeeds from the
position the batch was read at (``expect_row``), so two instances can never
both record the same batch, and a crash records all of it or none.
"""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

import structlog
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic

from commands.application import WorkflowApplication
from domain.execution import (
    ExecutionCanceledEvent,
    ExecutionCrashedEvent,
    ExecutionFailedEvent,
    ExecutionSucceededEvent,
)
from domain.meta import EventMeta
from domain.workflow import Workflow
from infrastructure.eventstore import EVENTS_TABLE, SideStatement, decode_event

log = structlog.get_logger("reporunner.workflow_runs")

NAME = "workflow-runs"
_ENDINGS = {
    ExecutionSucceededEvent: "succeeded",
    ExecutionFailedEvent: "failed",
    ExecutionCanceledEvent: "canceled",
    ExecutionCrashedEvent: "crashed",
}


class WorkflowRunsRecorder:
    def __init__(self, app: WorkflowApplication, batch_size: int = 500) -> None:
        self.app = app
        self.batch_size = batch_size
        self._ending_topics = {get_topic(cls): status for cls, status in _ENDINGS.items()}

    def ensure_tracking(self) -> None:
        with self.app.event_store.datastore.get_connection() as conn:
            conn.execute(
                "INSERT INTO projection_tracking (name) VALUES (%s) ON CONFLICT DO NOTHING",
                (NAME,),
            )

    def run_batch(self) -> int:
        """Record the endings among the next events; return how many events were read."""
        with self.app.event_store.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT position FROM projection_tracking WHERE name = %s", (NAME,))
            row = cur.fetchone()
            if row is None:
                raise LookupError(f"no tracking row for {NAME!r}")
            after = int(row["position"])
            cur.execute(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                f"FROM {EVENTS_TABLE} WHERE notification_id > %s "
                "ORDER BY notification_id LIMIT %s",
                (after, self.batch_size),
            )
            rows = cur.fetchall()
            if not rows:
                return 0
            endings = [r for r in rows if r["topic"] in self._ending_topics]
            runs_of = self._runs_of(cur, [r["originator_id"] for r in endings])
        last = int(rows[-1]["notification_id"])
        move = SideStatement(
            "UPDATE projection_tracking SET position = %s, updated_at = now() "
            "WHERE name = %s AND position = %s",
            (last, NAME, after),
            expect_row=True,
        )
        workflows: dict[UUID, Workflow] = {}
        for row in endings:
            event: Any = decode_event(
                self.app.mapper,
                row["originator_id"],
                row["originator_version"],
                row["topic"],
                row["state"],
            )
            workflow_id, revision = runs_of[row["originator_id"]]
            if workflow_id not in workflows:
                try:
                    loaded: object = self.app.repository.get(workflow_id)
                except AggregateNotFoundError:
                    loaded = None
                if not isinstance(loaded, Workflow):
                    # Never stall the log on one bad reference: say so, go on.
                    log.error(
                        "execution of an unknown workflow",
                        execution_id=str(row["originator_id"]),
                        workflow_id=str(workflow_id),
                    )
                    continue
                workflows[workflow_id] = loaded
            meta = event.meta
            workflows[workflow_id].record_execution(
                event.originator_id,
                self._ending_topics[row["topic"]],
                revision,
                EventMeta(
                    org_id=meta["org_id"],
                    actor=meta["actor"],
                    correlation_id=meta["correlation_id"],
                    causation_id=str(event.originator_id),
                ),
            )
        try:
            # Saved with no workflow events too: the position still moves.
            self.app.save(*workflows.values(), side_statements=[move])
        except IntegrityError:
            # Another instance recorded this batch (or a workflow moved on
            # under us): read again from where the tracking row now is.
            return 0
        return len(rows)

    def _runs_of(self, cur: Any, execution_ids: list[UUID]) -> dict[UUID, tuple[UUID, int | None]]:
        """Each execution's workflow and the revision it ran, from its ``Queued`` event.

        The revision is None for executions queued before Queued recorded it.
        """
        if not execution_ids:
            return {}
        cur.execute(
            f"SELECT originator_id, topic, state FROM {EVENTS_TABLE} "
            "WHERE originator_id = ANY(%s) AND originator_version = 1",
            (execution_ids,),
        )
        found = {}
        for row in cur.fetchall():
            queued: Any = decode_event(
                self.app.mapper, row["originator_id"], 1, row["topic"], row["state"]
            )
            found[row["originator_id"]] = (
                queued.workflow_id,
                getattr(queued, "workflow_revision", None),
            )
        return found

    def catch_up(self) -> int:
        total = 0
        while count := self.run_batch():
            total += count
        return total

    def run_forever(self, stop: threading.Event, poll_s: float = 0.2) -> None:
        backoff = poll_s
        while not stop.is_set():
            try:
                self.ensure_tracking()
                while not stop.is_set():
                    if not self.run_batch():
                        stop.wait(poll_s)
                    backoff = poll_s
            except Exception as exc:  # the database is away: back off, retry
                log.warning("workflow runs recorder retrying", error=str(exc))
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)


def start_in_thread(recorder: WorkflowRunsRecorder, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(
        target=recorder.run_forever, args=(stop,), name="workflow-runs", daemon=True
    )
    thread.start()
    return thread
