"""The PostgreSQL event store: eventsourcing's recorder plus what we keep beside it.

The log table and its shape belong to eventsourcing; Alembic creates them
(``CREATE_TABLE`` is off). We extend the recorder in one way only: an
idempotency record, when given, is inserted in the same transaction as the
events it answers for, so a retried command either sees the committed first
answer or nothing at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import Cursor
from psycopg.rows import DictRow

from infrastructure.database import PgTarget
from infrastructure.settings import Settings

APPLICATION_NAME = "Reporunner"
EVENTS_TABLE = "reporunner_events"
SNAPSHOTS_TABLE = "reporunner_snapshots"
STORED_EVENT_TYPE = "stored_event_uuid"


@dataclass(frozen=True)
class IdempotencyRecord:
    """The first answer to a command sent with an ``Idempotency-Key``."""

    org_id: str
    key: str
    request_hash: str
    aggregate_id: UUID
    aggregate_version: int
    status_code: int


_INSERT_IDEMPOTENCY = (
    "INSERT INTO idempotency_keys "
    "(org_id, key, request_hash, aggregate_id, aggregate_version, status_code) "
    "VALUES (%s, %s, %s, %s, %s, %s)"
)
_SELECT_IDEMPOTENCY = (
    "SELECT org_id, key, request_hash, aggregate_id, aggregate_version, status_code "
    "FROM idempotency_keys WHERE org_id = %s AND key = %s"
)


class EventStoreRecorder(PostgresApplicationRecorder):
    """eventsourcing's application recorder with idempotency records and lookups."""

    def _insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        idempotency: IdempotencyRecord | None = None,
        **kwargs: Any,
    ) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        if idempotency is not None:
            # Before the table lock: a racing duplicate waits on the unique
            # index, not on the log, and fails once the first one commits.
            curs.execute(_INSERT_IDEMPOTENCY, _idempotency_params(idempotency), prepare=True)

    def find_idempotency(self, org_id: str, key: str) -> IdempotencyRecord | None:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(_SELECT_IDEMPOTENCY, (org_id, key), prepare=True)
            row = curs.fetchone()
        return None if row is None else IdempotencyRecord(**row)

    def insert_idempotency(self, record: IdempotencyRecord) -> IdempotencyRecord:
        """Store a record for a command that wrote no event; return the winner."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                _INSERT_IDEMPOTENCY + " ON CONFLICT (org_id, key) DO NOTHING",
                _idempotency_params(record),
            )
            curs.execute(_SELECT_IDEMPOTENCY, (record.org_id, record.key))
            row = curs.fetchone()
        assert row is not None
        return IdempotencyRecord(**row)

    def position_of(self, aggregate_id: UUID, version: int) -> int:
        """The log position (notification id) of one aggregate's event."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                f"SELECT notification_id FROM {EVENTS_TABLE} "
                "WHERE originator_id = %s AND originator_version = %s",
                (aggregate_id, version),
                prepare=True,
            )
            row = curs.fetchone()
        if row is None:
            raise LookupError(f"no event {aggregate_id} v{version}")
        return int(row["notification_id"])


def _idempotency_params(record: IdempotencyRecord) -> tuple[object, ...]:
    return (
        record.org_id,
        record.key,
        record.request_hash,
        record.aggregate_id,
        record.aggregate_version,
        record.status_code,
    )


def eventsourcing_env(target: PgTarget, settings: Settings) -> dict[str, str]:
    """The environment eventsourcing's PostgreSQL factory reads.

    Passed explicitly so stray ``POSTGRES_*`` variables cannot redirect the log.
    Never ``POSTGRES_ENABLE_DB_FUNCTIONS``: that mode skips the table lock and
    lets tailing readers miss events.
    """
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "APPLICATION_RECORDER_TOPIC": f"{EventStoreRecorder.__module__}:EventStoreRecorder",
        "CREATE_TABLE": "n",
        "POSTGRES_DBNAME": target.dbname,
        "POSTGRES_HOST": target.host,
        "POSTGRES_PORT": str(target.port),
        "POSTGRES_USER": target.user,
        "POSTGRES_PASSWORD": target.password,
        "POSTGRES_SCHEMA": "public",
        "POSTGRES_POOL_SIZE": str(settings.db_pool_size),
        "POSTGRES_MAX_OVERFLOW": str(settings.db_max_overflow),
        "POSTGRES_LOCK_TIMEOUT": str(settings.db_lock_timeout_s),
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": str(
            settings.db_idle_in_transaction_timeout_s
        ),
        "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
    }
