"""The PostgreSQL event store: eventsourcing's recorder plus what we keep beside it.

The log table and its shape belong to eventsourcing; Alembic creates them
(``CREATE_TABLE`` is off). An idempotency record, when given, is inserted in
the same transaction as the events it answers for, so a retried command
either sees the committed first answer or nothing at all. Other rows that
must change exactly when events are recorded (the execution queue's) travel
the same way, as ``side_statements``.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast
from uuid import UUID

import orjson
import psycopg
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    JSONTranscoder,
    OperationalError,
    StoredEvent,
    find_id_convertor,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.utils import resolve_topic, retry
from psycopg import ClientCursor
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import ExecStatus
from psycopg.sql import SQL, Composable, Identifier, Literal

from infrastructure import tracing
from infrastructure.database import PgTarget
from infrastructure.metrics import EVENTS_APPENDED
from infrastructure.settings import Settings

APPLICATION_NAME = "Reporunner"
EVENTS_TABLE = "reporunner_events"
SNAPSHOTS_TABLE = "reporunner_snapshots"
STORED_EVENT_TYPE = "stored_event_uuid"


@dataclass(frozen=True)
class SideStatement:
    """A statement run in the same transaction as a save's events.

    ``sql`` uses ``%s`` placeholders; values are bound client-side by psycopg.
    ``expect_row``: the statement must touch a row, or the whole save fails
    with ``IntegrityError`` (e.g. a lease that is no longer ours).
    ``after_lock``: run after the events' insert, under the log's table lock,
    where one save at a time runs: for a row every save of an organisation
    changes (a counter), which taken before the lock could deadlock two
    processes' groups that touch two such rows in opposite orders.
    """

    sql: str
    params: tuple[object, ...] = ()
    expect_row: bool = False
    after_lock: bool = False


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
    """eventsourcing's application recorder, with idempotency records, lookups,
    and a write path of one round trip, shared by concurrent saves (group commit).

    ``insert_events`` keeps the library's protocol: in one transaction, take
    the ``EXCLUSIVE`` table lock (so positions commit in order and a tailing
    reader never passes a gap that fills later), NOTIFY listeners, insert.
    But the library sends each statement separately, in pipeline mode, and
    holds the table lock across several network round trips; psycopg's
    pipeline also busy-polls the socket while it waits, burning a core that
    PostgreSQL needs on a small machine. We send the whole transaction as one
    script (values bound client-side by psycopg, never by string-pasting), so
    the lock is held only while the server runs it: writers serialise on
    server time, not on round trips.

    Group commit: the lock and the commit's fsync are what every save pays,
    so saves that arrive while this process is committing wait, and then go
    together, in arrival order, in one script: one transaction, one lock, one
    NOTIFY, one fsync. Nobody waits on a timer: an idle store commits a lone
    save at once, and a busy one commits whatever queued meanwhile (at most
    ``MAX_GROUP`` saves). A group's saves run in order inside the
    transaction, so it is exactly as if they had committed one after another
    with nobody between them. Should one of them fail (an optimistic
    conflict on the log's unique key, an idempotency key already used, a
    side statement that found no row), the group's transaction is undone
    and its halves are committed apart, down to the failing save alone:
    only that save fails, and none is acknowledged before a COMMIT that
    holds it. Across processes the table lock orders the groups.
    """

    MAX_GROUP = 64  # saves per group: bounds one script's size and the lock's hold

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        table = Identifier(self.datastore.schema, self.events_table_name)
        self._lock_and_notify = SQL(
            "SET LOCAL lock_timeout = '{timeout}s'; "
            "LOCK TABLE {table} IN EXCLUSIVE MODE; "
            "NOTIFY {channel}"
        ).format(
            timeout=self.datastore.lock_timeout,
            table=table,
            channel=Identifier(self.channel_name),
        )
        self._insert_prefix = SQL(
            "INSERT INTO {table} (originator_id, originator_version, topic, state) VALUES "
        ).format(table=table)
        # The two above rendered once: escaping identifiers on every save cost
        # more than rendering its events (py-spy, bench/command_cpu.py).
        self._rendered: tuple[bytes, bytes] | None = None
        # Saves waiting for a commit, and whether a thread is committing:
        # it is then the only one that may, and hands over when it is done.
        self._queue_lock = threading.Lock()
        self._queued: list[_Save] = []
        self._committing = False

    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        idempotency: IdempotencyRecord | None = None,
        side_statements: Sequence[SideStatement] = (),
        **_: Any,
    ) -> Sequence[int] | None:
        save = _Save(tuple(stored_events), idempotency, tuple(side_statements))
        # The span is this caller's (its wait for the group's commit included):
        # the thread that commits the group may be another command's.
        traced = tracing.span(
            "append events",
            client=True,
            attributes={
                "db.system.name": "postgresql",
                "db.operation.name": "INSERT",
                "db.collection.name": self.events_table_name,
                "reporunner.events": len(save.events),
            },
        )
        with traced:
            with self._queue_lock:
                self._queued.append(save)
                leads = not self._committing
                self._committing = True
            if not leads:
                # Woken once: settled by a committer, or handed the next group to commit.
                save.woken.wait()
            if not save.done:
                self._commit_next_group()
        if save.error is not None:
            raise save.error
        return save.positions

    def _commit_next_group(self) -> None:
        """Commit the queued saves (this thread's own first), then hand over to the next."""
        with self._queue_lock:
            group = self._queued[: self.MAX_GROUP]
            del self._queued[: self.MAX_GROUP]
        try:
            self._commit_group(group)
        finally:
            with self._queue_lock:
                successor = self._queued[0] if self._queued else None
                self._committing = successor is not None
            if successor is not None:
                successor.woken.set()

    def _commit_group(self, group: list[_Save]) -> None:
        """Commit ``group`` in one transaction, settling every save.

        A save's own failure (``IntegrityError``: a conflict, a used key, a
        side statement's missing row) undoes the group's transaction; each
        half is then committed on its own, down to the failing save alone,
        which alone fails. Failures of the database itself (connection,
        lock timeout) are retried as a whole, then fail the whole group.
        """
        try:
            try:
                results = self._run_retried(group)
            except (InterfaceError, OperationalError) as exc:
                for save in group:
                    save.settle(None, exc)
                return
            except Exception as exc:
                if len(group) == 1:
                    group[0].settle(None, exc)
                    return
                half = len(group) // 2
                self._commit_group(group[:half])
                self._commit_group(group[half:])
                return
            for save, positions in zip(group, results, strict=True):
                save.settle(positions, None)
        except BaseException as exc:  # interrupted: no save may wait forever
            for save in group:
                if not save.done:
                    save.settle(None, exc)
            raise

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _run_retried(self, group: Sequence[_Save]) -> list[list[int]]:
        return self._run(group)

    def _run(self, group: Sequence[_Save]) -> list[list[int]]:
        """One transaction of ``group``'s saves, in order; the positions of each save's events."""
        events = [e for save in group for e in save.events]
        # A cursor of its own (ClientCursor, for the one-round-trip script) is
        # not the connection's, which the psycopg instrumentation traces: each
        # save's "append events" span (``insert_events``) stands for it.
        with self.datastore.get_connection() as conn, ClientCursor(conn) as curs:
            script = [b"BEGIN"]
            for save in group:
                script += (part.as_bytes(curs) for part in self._before_lock(save))
            if events:
                lock_and_notify, insert_prefix = self._constant_sql(curs)
                rows = b", ".join(_event_row(e, curs) for e in events)
                script += [lock_and_notify, insert_prefix + rows + _RETURNING]
            for save in group:
                script += (
                    _rendered(statement).as_bytes(curs)
                    for statement in save.side_statements
                    if statement.after_lock
                )
            script.append(b"COMMIT")
            try:
                curs.execute(b"; ".join(script))
            except psycopg.errors.DivisionByZero:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                raise IntegrityError("a side statement expected a row and found none") from None
            except BaseException:
                # The script stopped inside its transaction: end it.
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                raise
            EVENTS_APPENDED.inc(len(events))
            positions = dict(_returned_positions(curs))
        return [
            sorted(positions[str(e.originator_id), e.originator_version] for e in save.events)
            for save in group
        ]

    def _constant_sql(self, curs: ClientCursor[Any]) -> tuple[bytes, bytes]:
        """The lock-and-notify statement and the INSERT's head, as the server reads them."""
        if self._rendered is None:
            self._rendered = (
                self._lock_and_notify.as_bytes(curs),
                self._insert_prefix.as_bytes(curs),
            )
        return self._rendered

    @staticmethod
    def _before_lock(save: _Save) -> list[Composable]:
        """A save's side statements and idempotency record, run before the table lock."""
        script: list[Composable] = [
            _rendered(statement) for statement in save.side_statements if not statement.after_lock
        ]
        if save.idempotency is not None:
            # Before the table lock: a racing duplicate waits on the unique
            # index, not on the log, and fails once the first one commits.
            script.append(
                SQL(_INSERT_IDEMPOTENCY.replace("%s", "{}")).format(
                    *map(Literal, _idempotency_params(save.idempotency))
                )
            )
        return script

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


@dataclass
class _Save:
    """One caller's ``insert_events``, waiting for its group's commit."""

    events: tuple[StoredEvent, ...]
    idempotency: IdempotencyRecord | None
    side_statements: tuple[SideStatement, ...]
    positions: list[int] | None = None
    error: BaseException | None = None
    done: bool = False
    woken: threading.Event = field(default_factory=threading.Event)

    def settle(self, positions: list[int] | None, error: BaseException | None) -> None:
        self.positions, self.error, self.done = positions, error, True
        self.woken.set()


_RETURNING = b" RETURNING notification_id, originator_id, originator_version"
_PLAIN_TOPIC = re.compile(r"[A-Za-z0-9_.:]+")


def _event_row(event: StoredEvent, curs: ClientCursor[Any]) -> bytes:
    """One event's ``VALUES`` row, as psycopg's ``Literal`` renders it, without its
    per-value adapter lookups (they were most of a save's client CPU).

    Rendered by hand only where the text cannot need escaping: a UUID, an int,
    a topic of identifier characters, the state as hex in an escape string
    (read the same whatever ``standard_conforming_strings`` says). Anything
    else goes through ``Literal``.
    """
    originator_id, version, topic = event.originator_id, event.originator_version, event.topic
    if type(originator_id) is UUID and type(version) is int and _PLAIN_TOPIC.fullmatch(topic):
        return b"('%s'::uuid, %d, '%s', E'\\\\x%s'::bytea)" % (
            str(originator_id).encode(),
            version,
            topic.encode(),
            bytes(event.state).hex().encode(),
        )
    return (
        SQL("({}, {}, {}, {})")
        .format(Literal(originator_id), Literal(version), Literal(topic), Literal(event.state))
        .as_bytes(curs)
    )


def _rendered(statement: SideStatement) -> Composable:
    rendered: Composable = SQL(statement.sql.replace("%s", "{}")).format(
        *map(Literal, statement.params)
    )
    if statement.expect_row:
        # A zero-row change divides by zero: the transaction aborts.
        rendered = SQL("WITH changed AS ({} RETURNING 1) SELECT 1 / count(*) FROM changed").format(
            rendered
        )
    return rendered


def _returned_positions(curs: ClientCursor[Any]) -> Iterator[tuple[tuple[str, int], int]]:
    """((originator id, version), position) of each row of the script's INSERT ... RETURNING."""
    while True:
        if (
            curs.pgresult is not None
            and curs.pgresult.status == ExecStatus.TUPLES_OK
            and curs.description is not None
            and curs.description[0].name == "notification_id"
        ):
            for row in curs.fetchall():
                key = (str(row["originator_id"]), int(row["originator_version"]))
                yield key, int(row["notification_id"])
        if not curs.nextset():
            return


def _idempotency_params(record: IdempotencyRecord) -> tuple[object, ...]:
    return (
        record.org_id,
        record.key,
        record.request_hash,
        record.aggregate_id,
        record.aggregate_version,
        record.status_code,
    )


def decode_event(
    mapper: Any, originator_id: UUID, originator_version: int, topic: str, state: bytes
) -> Any:
    """The domain event stored in one row of the log, read by our own SQL.

    Exactly what ``mapper.to_domain_event`` gives, most often without it: the
    library's transcoder decodes with the stdlib's ``json`` and a Python hook
    on every object, which made reading the log (rebuilds above all) several
    times slower than the database. orjson decodes the state instead and only
    the top level's ``_type_`` markers (the timestamp, ids) are transcoded,
    by the mapper's own transcodings. Anything this cannot do exactly as the
    mapper would (a nested marker, a numeral orjson reads differently, a
    cipher, an upcast) goes to the mapper.
    """
    event = _fast_decode(mapper, originator_id, originator_version, topic, state)
    if event is not None:
        return event
    return mapper.to_domain_event(
        StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=topic,
            state=bytes(state),
        )
    )


_MARKER: Final = b'"_type_"'
# orjson reads integer numerals past 64 bits as floats, the stdlib as ints:
# any run of 19 digits (in a number or a string) leaves it to the mapper.
# (Digits mapped to "0", all else to " ", then a substring search: ten
# times faster than a regular expression.)
_DIGITS_AS_ZERO: Final = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_DIGITS: Final = b"0" * 19


def _fast_decode(
    mapper: Any, originator_id: UUID, originator_version: int, topic: str, state: bytes
) -> Any:
    """The event decoded with orjson, or None where only the mapper decodes it exactly."""
    transcoder = mapper.transcoder
    if (
        type(transcoder) is not JSONTranscoder
        or mapper.cipher is not None
        or mapper.compressor is not None
        or _LONG_DIGITS in state.translate(_DIGITS_AS_ZERO)
    ):
        return None
    try:
        values = orjson.loads(state)  # refuses NaN, lone surrogates, 1e400: the mapper's
    except orjson.JSONDecodeError:
        return None
    if not isinstance(values, dict) or _is_marker(values):
        return None
    markers = state.count(_MARKER)  # at least as many as there are markers
    if markers:
        names = transcoder.names
        for key, value in values.items():
            if type(value) is dict and _is_marker(value):
                name, data = value["_type_"], value["_data_"]
                if type(name) is not str or type(data) is not str or name not in names:
                    return None
                transcoding = names[name]
                try:
                    values[key] = transcoding.decode(data)
                except Exception:  # the mapper's to raise, as it does
                    return None
                markers -= 1
        if markers:  # a nested marker, or the text "_type_" somewhere: not ours
            return None
    cls = resolve_topic(topic)
    if "class_version" in values or getattr(cls, "class_version", 1) != 1:
        return None  # upcasting is the mapper's
    convert = find_id_convertor(cls, cast(Hashable, type(originator_id)))  # as the mapper does
    values["originator_id"] = convert(originator_id)
    values["originator_version"] = originator_version
    event = object.__new__(cls)
    object.__setattr__(event, "__dict__", values)
    return event


def _is_marker(value: dict[str, Any]) -> bool:
    """Whether the transcoder's object hook would decode this object."""
    return len(value) == 2 and "_type_" in value and "_data_" in value


# Our key in eventsourcing's environment: the URL's libpq parameters, as a conninfo string.
LIBPQ_PARAMS = "POSTGRES_LIBPQ_PARAMS"


class EventStoreFactory(PostgresFactory):
    """eventsourcing's PostgreSQL factory, with every libpq parameter of the URL.

    The library's datastore passes only dbname, host, port, user and password
    to its pool; ``sslmode``, ``application_name`` and the rest would be
    dropped. Its pool opens lazily, so adding them to the pool's connection
    keyword arguments here reaches every connection it ever makes.
    """

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        params = conninfo_to_dict(self.env.get(LIBPQ_PARAMS) or "")
        params.setdefault("fallback_application_name", "reporunner-eventstore")
        kwargs = self.datastore.pool.kwargs
        assert isinstance(kwargs, dict)
        kwargs.update(params)


def eventsourcing_env(target: PgTarget, settings: Settings) -> dict[str, str]:
    """The environment eventsourcing's PostgreSQL factory reads.

    Passed explicitly so stray ``POSTGRES_*`` variables cannot redirect the log.
    Never ``POSTGRES_ENABLE_DB_FUNCTIONS``: that mode skips the table lock and
    lets tailing readers miss events.
    """
    pools = settings.pool_sizes()
    return {
        "PERSISTENCE_MODULE": f"{EventStoreFactory.__module__}:EventStoreFactory",
        "APPLICATION_RECORDER_TOPIC": f"{EventStoreRecorder.__module__}:EventStoreRecorder",
        "CREATE_TABLE": "n",
        "POSTGRES_DBNAME": target.dbname,
        "POSTGRES_HOST": target.host,
        "POSTGRES_PORT": str(target.port),
        "POSTGRES_USER": target.user,
        "POSTGRES_PASSWORD": target.password,
        LIBPQ_PARAMS: make_conninfo(**target.libpq_params()),
        "POSTGRES_SCHEMA": "public",
        "POSTGRES_POOL_SIZE": str(pools.events),
        "POSTGRES_MAX_OVERFLOW": str(pools.events_overflow),
        # psycopg_pool's wait for a connection (eventsourcing retries it, 10 times).
        "POSTGRES_CONNECT_TIMEOUT": str(max(1, round(settings.db_pool_timeout_s))),
        "POSTGRES_LOCK_TIMEOUT": str(settings.db_lock_timeout_s),
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": str(
            settings.db_idle_in_transaction_timeout_s
        ),
        "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
        # Keep recently used aggregates in memory; every load still reads the
        # events recorded since (fast-forward), so another process's writes
        # are seen, and hands out a deep copy, so a failed command cannot
        # corrupt the cached one. A much-run workflow then loads in one query.
        "AGGREGATE_CACHE_MAXSIZE": "10000",
        "AGGREGATE_CACHE_FASTFORWARD": "y",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "y",
    }
