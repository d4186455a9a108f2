"""The execution queue in PostgreSQL: competing workers with leases.

Why PostgreSQL and not Redis Streams: a queue row is written in the same
transaction as the execution's ``Queued`` event and deleted in the same
transaction as its terminal event, so the queue can never disagree with the
log (no execution queued but never run, none run that was never logged), and
it works on the embedded default with no Redis at all.

- ``claim``: ``FOR UPDATE SKIP LOCKED`` hands each row to one worker; the
  claim is a lease (``lease_expires_at``) the worker renews while it runs.
- A row whose lease expired belongs to a worker that died: the next claim
  takes it over (``claims`` > 1 tells the new worker so).
- A retry that waits out its back-off is queued unclaimed with
  ``lease_expires_at`` at its not-before time: ``lease_expires_at`` is when a
  row may next be claimed, for a lost worker's row and a waiting retry
  alike, so the claim query and its index serve both and no worker takes a
  retry early. (A row's ``claims`` still counts only real claims.) Workers
  poll, so a retry starts within a poll interval of its time.
- Claim order: rows whose time came (a dead worker's expired lease, a retry
  whose back-off ended), oldest first, before never-claimed rows in enqueue
  order: a killed worker's executions are taken over within a lease, not
  after the whole queue (issue 15: 143-165 s behind 2,000 queued rows). Both
  halves are ranges of one index (``CLAIM_SQL``).
- ``NOTIFY reporunner_executions`` on enqueue wakes idle workers at once;
  they also poll, because a LISTEN connection can die silently.
- ``claim_loaded``: a worker process claims for all its idle threads at once
  and reads the claimed executions' events in the same statement, so a
  batch of runs costs one round trip to start, not two per run (a claim,
  then a load).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore
from psycopg.sql import SQL, Composed, Identifier

from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE, SideStatement

CHANNEL = "reporunner_executions"


# Rows whose time came (a lease expired: its worker died; or a retry's back-off
# ended) first, oldest first, then never-claimed rows in enqueue order. Two
# halves, each a range of the claimable index, (lease_expires_at NULLS FIRST,
# enqueued_at): one ORDER BY over both would put the NULLs (fresh rows) first,
# and NULLS LAST would walk every live lease before reaching a fresh row. The
# outer LIMIT reads (and locks) fresh rows only when too few are due.
# statement_timestamp(), not clock_timestamp(): only a stable value can bound
# the index scan. Both ORDER BYs are the index's own (the planner does not take
# IS NULL for a constant: ``ORDER BY enqueued_at`` alone would sort every fresh
# row). Parameters: limit, limit, worker id, lease seconds, limit.
CLAIM_SQL = (
    "WITH due AS ("
    "  SELECT execution_id FROM execution_queue "
    "  WHERE lease_expires_at < statement_timestamp() "
    "  ORDER BY lease_expires_at NULLS FIRST, enqueued_at LIMIT %s FOR UPDATE SKIP LOCKED), "
    "fresh AS ("
    "  SELECT execution_id FROM execution_queue WHERE lease_expires_at IS NULL "
    "  ORDER BY lease_expires_at NULLS FIRST, enqueued_at LIMIT %s FOR UPDATE SKIP LOCKED) "
    "UPDATE execution_queue q "
    "SET claimed_by = %s, claims = q.claims + 1, "
    "    lease_expires_at = clock_timestamp() + make_interval(secs => %s) "
    "FROM (SELECT execution_id FROM due UNION ALL SELECT execution_id FROM fresh "
    "      LIMIT %s) ready "
    "WHERE q.execution_id = ready.execution_id "
    "RETURNING q.execution_id, q.claims"
)


# The claim, and the claimed executions' events as this statement's snapshot
# holds them: a row is queued in the transaction that records its ``Queued``
# event, so a claimable row's events are there. (One appended after the
# snapshot, say a cancel's, fails the run's first save on its version, as
# with a separate load.) An execution with no events yields one row of NULLs.
_CLAIM_LOADED_SQL = (
    "WITH claimed AS (" + CLAIM_SQL + ") "
    "SELECT c.execution_id, c.claims, e.originator_version, e.topic, e.state "
    "FROM claimed c LEFT JOIN {events} e ON e.originator_id = c.execution_id "
    "ORDER BY c.execution_id, e.originator_version"
)


@dataclass(frozen=True)
class Claim:
    execution_id: UUID
    claims: int
    """How many times the row was claimed, this claim included: > 1 means a
    previous worker's lease expired."""


@dataclass(frozen=True)
class LoadedClaim:
    """A claim and its execution's stored events, in version order (none: no such
    execution)."""

    claim: Claim
    events: list[StoredEvent]


def enqueue(
    execution_id: UUID,
    org_id: str,
    workflow_id: UUID,
    *,
    claimed_by: str | None = None,
    lease_s: float | None = None,
    not_before: datetime | None = None,
) -> list[SideStatement]:
    """Statements that queue an execution (already claimed by ``claimed_by``, if given).

    ``not_before``: no worker claims it before then (an unclaimed execution only).
    """
    if not_before is not None:
        if claimed_by is not None:
            raise ValueError("a claimed execution has started: it cannot wait")
        return [
            SideStatement(
                "INSERT INTO execution_queue (execution_id, org_id, workflow_id, "
                "lease_expires_at) VALUES (%s, %s, %s, %s)",
                (execution_id, org_id, workflow_id, not_before),
            ),
            SideStatement(f"NOTIFY {CHANNEL}"),
        ]
    if claimed_by is None:
        return [
            SideStatement(
                "INSERT INTO execution_queue (execution_id, org_id, workflow_id) "
                "VALUES (%s, %s, %s)",
                (execution_id, org_id, workflow_id),
            ),
            SideStatement(f"NOTIFY {CHANNEL}"),
        ]
    return [
        SideStatement(
            "INSERT INTO execution_queue "
            "(execution_id, org_id, workflow_id, claimed_by, lease_expires_at, claims) "
            "VALUES (%s, %s, %s, %s, clock_timestamp() + make_interval(secs => %s), 1)",
            (execution_id, org_id, workflow_id, claimed_by, lease_s),
        )
    ]


def dequeue(execution_id: UUID) -> SideStatement:
    """The statement that removes a finished execution from the queue."""
    return SideStatement("DELETE FROM execution_queue WHERE execution_id = %s", (execution_id,))


class ExecutionQueue:
    """Claims, lease renewals and wake-ups, on the event store's connection pool."""

    def __init__(self, datastore: PostgresDatastore, target: PgTarget) -> None:
        self.datastore = datastore
        self.target = target
        self._claim_loaded: Composed = SQL(_CLAIM_LOADED_SQL).format(  # type: ignore[arg-type]
            events=Identifier(datastore.schema, EVENTS_TABLE)
        )

    def claim(self, worker_id: str, lease_s: float, limit: int = 1) -> list[Claim]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(CLAIM_SQL, (limit, limit, worker_id, lease_s, limit), prepare=True)
            rows = curs.fetchall()
        return [Claim(row["execution_id"], row["claims"]) for row in rows]

    def claim_loaded(self, worker_id: str, lease_s: float, limit: int) -> list[LoadedClaim]:
        """``claim``, with each claimed execution's stored events: one round trip."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                self._claim_loaded, (limit, limit, worker_id, lease_s, limit), prepare=True
            )
            rows = curs.fetchall()
        loaded: dict[UUID, LoadedClaim] = {}
        for row in rows:
            execution_id = row["execution_id"]
            entry = loaded.get(execution_id)
            if entry is None:
                entry = loaded[execution_id] = LoadedClaim(Claim(execution_id, row["claims"]), [])
            if row["originator_version"] is not None:
                entry.events.append(
                    StoredEvent(
                        originator_id=execution_id,
                        originator_version=row["originator_version"],
                        topic=row["topic"],
                        state=bytes(row["state"]),
                    )
                )
        return list(loaded.values())

    def renew(self, execution_id: UUID, worker_id: str, lease_s: float) -> bool:
        """Extend our lease; False if the row is gone (finished, canceled) or not ours."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "UPDATE execution_queue "
                "SET lease_expires_at = clock_timestamp() + make_interval(secs => %s) "
                "WHERE execution_id = %s AND claimed_by = %s",
                (lease_s, execution_id, worker_id),
                prepare=True,
            )
            return curs.rowcount == 1

    def release(self, execution_id: UUID, worker_id: str) -> None:
        """Give a claimed row back unrun (a worker shutting down before starting it)."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "UPDATE execution_queue SET claimed_by = NULL, lease_expires_at = NULL, "
                "claims = claims - 1 WHERE execution_id = %s AND claimed_by = %s",
                (execution_id, worker_id),
            )

    def remove(self, execution_id: UUID) -> None:
        """Drop the row of an execution that has already ended (its end committed)."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(dequeue(execution_id).sql, dequeue(execution_id).params)

    def depth(self) -> int:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute("SELECT count(*) AS n FROM execution_queue")
            row = curs.fetchone()
        return int(row["n"]) if row else 0

    @contextmanager
    def listening(self) -> Iterator[psycopg.Connection[object]]:
        """A dedicated connection LISTENing for enqueues; ``wait`` on it."""
        conn = psycopg.connect(
            self.target.conninfo(application_name="reporunner-worker"), autocommit=True
        )
        try:
            conn.execute(f"LISTEN {CHANNEL}")
            yield conn
        finally:
            conn.close()


def wait_for_enqueue(conn: psycopg.Connection[object], timeout_s: float) -> None:
    """Block until an enqueue is notified or ``timeout_s`` passes."""
    for _ in conn.notifies(timeout=timeout_s, stop_after=1):
        pass
