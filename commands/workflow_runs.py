"""Record each finished execution in its workflow's history, from the log.

A process manager: it follows the log, and for every execution that ended
(``Succeeded``, ``Failed``, ``Canceled``, ``Crashed``) appends ``Executed`` to
the workflow. Doing this here rather than in the same transaction as the
execution's end keeps the hot path free of the workflow aggregate: runs of a
much-used workflow would otherwise all contend for its next version.

It is a follower of the log like the projections (``projections/follower.py``:
one loop, retries, dead letters); an ending it cannot record (say, a state
that does not decode) becomes a dead letter and the others go on.

Exactly once: the batch's ``Executed`` events and the move of its tracking
position commit in one transaction, and the move only succeeds from the
position the batch was read at (``expect_row``), so two instances can never
both record the same batch, and a crash records all of it or none.

Edits come first: a workflow with very many runs could otherwise have an
edit lose every save to them (each run moves the version the edit read). An
edit that lost a few saves holds the runs off (``runs_held_off``: a
transaction advisory lock on the workflow) from its next read to its save;
a batch that records a run of a held workflow checks that lock without
waiting (``edits_not_holding``) and fails like any other race, to be read
again once the edit has saved. The follower never waits on the lock, so it
cannot deadlock with the log's table lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
import structlog
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError
from eventsourcing.utils import get_topic

from commands.application import WorkflowApplication
from commands.log_follower import LogCommandFollower
from domain.execution import (
    ExecutionCanceledEvent,
    ExecutionCrashedEvent,
    ExecutionFailedEvent,
    ExecutionSucceededEvent,
)
from domain.meta import EventMeta
from domain.workflow import ExecutionChain, Workflow
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE, SideStatement, decode_event
from projections.dead_letters import DeadLetter, describe
from projections.follower import FollowerLoop

log = structlog.get_logger("reporunner.workflow_runs")

NAME = "workflow-runs"
_ENDINGS = {
    ExecutionSucceededEvent: "succeeded",
    ExecutionFailedEvent: "failed",
    ExecutionCanceledEvent: "canceled",
    ExecutionCrashedEvent: "crashed",
}


_EDIT_LOCK = "workflow-edit:"


@contextmanager
def runs_held_off(app: WorkflowApplication, workflow_id: UUID) -> Iterator[None]:
    """Refuse the runs follower's batches that touch ``workflow_id`` until the block ends.

    Waits for a batch that already holds the workflow to commit. The lock
    lives in a transaction of a connection of its own, so it outlasts the
    save made inside the block and ends with it.
    """
    with app.event_store.datastore.get_connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_EDIT_LOCK + str(workflow_id),))
        yield


def edits_not_holding(workflow_ids: Iterable[UUID]) -> SideStatement:
    """A save's check that no edit holds any of ``workflow_ids`` off (``runs_held_off``).

    Never waits: a held workflow divides by zero, which fails the save with
    ``IntegrityError`` like a lost race (no ids: 1 / NULL, which passes).
    """
    return SideStatement(
        "SELECT 1 / bool_and(pg_try_advisory_xact_lock_shared(hashtext(%s || id)))::int "
        "FROM unnest(%s::text[]) AS id",
        (_EDIT_LOCK, [str(workflow_id) for workflow_id in workflow_ids]),
    )


class WorkflowRunsRecorder(LogCommandFollower):
    """A follower of the log (``projections/follower.py``): its loop, retries and
    dead letters; here only what one batch does."""

    name = NAME
    lock_key = f"projection:{NAME}"
    transient = (psycopg.OperationalError, OperationalError, InterfaceError)

    columns = "notification_id, originator_id, originator_version, topic, state"

    def __init__(
        self,
        app: WorkflowApplication,
        batch_size: int = 500,
        *,
        target: PgTarget | None = None,
    ) -> None:
        super().__init__(app, batch_size, target)
        self._ending_topics = {get_topic(cls): status for cls, status in _ENDINGS.items()}

    def run_batch(self, conn: Any = None, limit: int | None = None) -> int:
        """Record the endings among the next events; return how many events were read."""
        rows, move = self.next_rows(limit)
        if move is None:
            return 0
        if not self._record(rows, move):
            # Another instance recorded this batch (or a workflow moved on
            # under us): read again from where the tracking row now is.
            return 0
        return len(rows)

    def _record(self, rows: list[Any], statement: SideStatement) -> bool:
        """``Executed`` for the endings in ``rows``, saved with ``statement``; False: a race."""
        endings = [r for r in rows if r["topic"] in self._ending_topics]
        with self.app.event_store.datastore.get_connection() as db, db.cursor() as cur:
            runs_of = self._runs_of(cur, [r["originator_id"] for r in endings])
        workflows: dict[UUID, Workflow] = {}
        for row in endings:
            event: Any = decode_event(
                self.app.mapper,
                row["originator_id"],
                row["originator_version"],
                row["topic"],
                row["state"],
            )
            workflow_id, revision, chain = runs_of[row["originator_id"]]
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
                        correlation_id=event.meta.get("correlation_id"),
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
                    traceparent=meta.get("traceparent"),
                ),
                chain=chain,
            )
        try:
            # Saved with no workflow events too: the statement still runs.
            self.app.save(
                *workflows.values(), side_statements=[edits_not_holding(workflows), statement]
            )
        except IntegrityError:
            return False
        return True

    def retry_dead_letters(self, letters: list[DeadLetter]) -> tuple[int, list[str]]:
        """Record the endings of dead-lettered events after a fix; (resolved, errors)."""
        resolved, errors = 0, []
        for letter in letters:
            with self.app.event_store.datastore.get_connection() as db, db.cursor() as cur:
                cur.execute(
                    "SELECT notification_id, originator_id, originator_version, topic, state "
                    f"FROM {EVENTS_TABLE} WHERE notification_id = %s",
                    (letter.position,),
                )
                rows = cur.fetchall()
            done = SideStatement(
                "UPDATE dead_letters SET resolved_at = now(), resolution = 'retried', "
                "last_seen = now() WHERE id = %s AND resolved_at IS NULL",
                (letter.id,),
                expect_row=True,
            )
            try:
                if self._record(rows, done):
                    resolved += 1
            except Exception as exc:
                errors.append(f"{letter.id}: {describe(exc)}")
                with self.app.event_store.datastore.get_connection() as db:
                    db.execute(
                        "UPDATE dead_letters SET attempts = attempts + 1, error = %s, "
                        "last_seen = now() WHERE id = %s",
                        (describe(exc), letter.id),
                    )
        return resolved, errors

    def _runs_of(
        self, cur: Any, execution_ids: list[UUID]
    ) -> dict[UUID, tuple[UUID, int | None, ExecutionChain]]:
        """Each execution's workflow, the revision it ran and its chain, from its ``Queued``.

        The revision is None for executions queued before Queued recorded it;
        the chain's fields default as the Execution aggregate's do.
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
                ExecutionChain(
                    trigger=getattr(queued, "trigger", "manual"),
                    retry_of=getattr(queued, "retry_of", None),
                    attempt=getattr(queued, "attempt", 1),
                ),
            )
        return found

    def catch_up(self) -> int:
        """Record until the log is exhausted (retries and dead letters as the live loop)."""
        with self.app.event_store.datastore.get_connection() as conn:
            return FollowerLoop(self, batch_size=self.batch_size).catch_up(conn)
