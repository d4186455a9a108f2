"""Projectors: consume the event log in order and keep document views up to date.

- Exactly-once: each batch reads its tracking row ``FOR UPDATE``, applies many
  events, writes the documents and the new position, and commits, all in one
  transaction. A crash loses the whole batch or nothing.
- Order without skips: eventsourcing's writers commit positions in order
  (table lock), so everything below the highest visible position is visible.
- Live tail, reconnection, leadership (one active projector per projection
  across processes) and what happens to a batch that fails: the follower
  loop, ``projections/follower.py``. An event the projection cannot apply
  becomes a dead letter and its documents are marked stale
  (``projections/dead_letters.py``); the others go on.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import orjson
import psycopg
import structlog
from eventsourcing.utils import get_topic
from psycopg import sql
from psycopg.types.json import set_json_dumps, set_json_loads

from commands.application import WorkflowApplication
from commands.history import event_type
from infrastructure import tracing
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE, decode_event
from projections.dead_letters import (
    STALE,
    DeadLetter,
    EventRef,
    LogRow,
    describe,
    failed_again,
    list_letters,
    log_rows,
    mark_stale,
    open_blockers,
    record,
    resolve,
    skip_next,
    stale_marker,
    storable,
)
from projections.follower import Follower, FollowerLoop, RetryPolicy, connect
from projections.store import DocumentCache, ViewBatch, collection_table, jsonb_text

log = structlog.get_logger("reporunner.projections")


class Projection(Protocol):
    name: str
    collections: tuple[str, ...]
    topics: tuple[type, ...]
    write_once: tuple[str, ...]
    """Collections whose documents are each put once and never read back by
    ``apply`` (a bulk load COPYs them straight in: ``DocumentCache``)."""

    def prefetch(self, events: Any, view: ViewBatch) -> None: ...

    def apply(self, event: Any, position: int, view: ViewBatch) -> None: ...

    # Optional: ``partition(originator_id, state) -> str`` of a stored event (its
    # state undecoded, so a loading process decodes only its own share), a key
    # such that every document changes with the events of one key only;
    # rebuilds then load in parallel (``projections/rebuild.py``).


def live_tables(projection: Projection) -> dict[str, sql.Composable]:
    return {c: sql.Identifier(collection_table(c)) for c in projection.collections}


@dataclass(frozen=True)
class EventBatch:
    """Events after position ``after`` up to ``last``; ``events`` are the ones we read."""

    after: int
    last: int
    count: int
    events: list[tuple[int, Any]]


def _lock_tracking(cur: psycopg.Cursor[Any], name: str) -> int:
    cur.execute("SELECT position FROM projection_tracking WHERE name = %s FOR UPDATE", (name,))
    row = cur.fetchone()
    if row is None:
        raise LookupError(f"no tracking row for projection {name!r}")
    return int(row[0])


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float


class Projector(Follower):
    """Runs one projection over the log (a follower: ``projections/follower.py``)."""

    def __init__(
        self,
        app: WorkflowApplication,
        target: PgTarget,
        projection: Projection,
        *,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.app = app
        self.target = target
        self.projection = projection
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.policy = policy or RetryPolicy()
        self.name = projection.name
        self.lock_key = f"projection:{projection.name}"
        self._topics = {get_topic(cls) for cls in projection.topics}

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        conn = connect(
            self.target,
            f"reporunner-projector:{self.projection.name}",
            autocommit=autocommit,
        )
        # Documents cross as jsonb on every batch: orjson both ways.
        set_json_loads(orjson.loads, conn)
        set_json_dumps(jsonb_text, conn)
        return conn

    def ensure_tracking(self, conn: psycopg.Connection[Any], name: str | None = None) -> None:
        with conn.transaction():
            conn.execute(
                "INSERT INTO projection_tracking (name) VALUES (%s) ON CONFLICT DO NOTHING",
                (name or self.projection.name,),
            )

    def start(self, conn: psycopg.Connection[Any]) -> None:
        self.ensure_tracking(conn)

    def run_batch(
        self,
        conn: psycopg.Connection[Any],
        limit: int | None = None,
        *,
        tables: Mapping[str, sql.Composable] | None = None,
        tracking: str | None = None,
        upto: int | None = None,
    ) -> int:
        """Apply the next batch of events in one transaction; return how many were read.

        ``tables`` and ``tracking`` redirect the batch into shadow tables and
        another tracking row (rebuilds); ``upto`` stops at a position.
        """
        name = tracking or self.projection.name
        with conn.transaction(), conn.cursor() as cur:
            position = _lock_tracking(cur, name)
            batch = self.read_events(cur, position, limit or self.batch_size, upto)
            if batch.count:
                self._apply(cur, batch, tables, name)
            return batch.count

    def skip(
        self,
        conn: psycopg.Connection[Any],
        error: str,
        attempts: int,
        *,
        tables: Mapping[str, sql.Composable] | None = None,
        tracking: str | None = None,
    ) -> int | None:
        """Dead-letter the next event and mark its aggregate's documents stale."""
        name = tracking or self.projection.name
        marked = list((tables or live_tables(self.projection)).values())

        def mark(cur: psycopg.Cursor[Any], row: LogRow, error: str) -> None:
            mark_stale(cur, marked, str(row[1]), stale_marker(row[0], row[3], error))

        return skip_next(conn, name, name, error, attempts, mark)

    def read_events(
        self,
        cur: psycopg.Cursor[Any],
        after: int,
        limit: int,
        upto: int | None = None,
        keep: Callable[[Any, bytes], bool] | None = None,
    ) -> EventBatch:
        """The next ``limit`` events after ``after``, decoded where this projection reads them
        (and, with ``keep``, only those whose stored (originator_id, state) it keeps)."""
        query = (
            "SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {EVENTS_TABLE} WHERE notification_id > %s"
        )
        params: list[Any] = [after]
        if upto is not None:
            query += " AND notification_id <= %s"
            params.append(upto)
        cur.execute(query + " ORDER BY notification_id LIMIT %s", [*params, limit])
        rows = cur.fetchall()
        events = [
            (
                notification_id,
                decode_event(self.app.mapper, originator_id, version, topic, state),
            )
            for notification_id, originator_id, version, topic, state in rows
            if topic in self._topics and (keep is None or keep(originator_id, state))
        ]
        return EventBatch(
            after=after, last=rows[-1][0] if rows else after, count=len(rows), events=events
        )

    def apply_batch(
        self,
        conn: psycopg.Connection[Any],
        batch: EventBatch,
        *,
        tables: Mapping[str, sql.Composable] | None = None,
        tracking: str | None = None,
        cache: DocumentCache | None = None,
    ) -> None:
        """Apply events read ahead of time, if the tracking row is still where they start."""
        name = tracking or self.projection.name
        with conn.transaction(), conn.cursor() as cur:
            position = _lock_tracking(cur, name)
            if position != batch.after:
                raise RuntimeError(
                    f"projection {name!r} moved to {position} while events after "
                    f"{batch.after} were read"
                )
            self._apply(cur, batch, tables, name, cache)

    def _apply(
        self,
        cur: psycopg.Cursor[Any],
        batch: EventBatch,
        tables: Mapping[str, sql.Composable] | None,
        name: str,
        cache: DocumentCache | None = None,
    ) -> None:
        view = ViewBatch(cur, tables or live_tables(self.projection), cache)
        # An aggregate with a dead letter waits behind it: its later events
        # are dead letters too, so its documents never skip an event. (A bulk
        # load, the one caller with a cache, starts with none and records
        # none: an event that fails ends it.)
        blockers = (
            open_blockers(cur, name, [event.originator_id for _, event in batch.events])
            if cache is None
            else {}
        )
        events = []
        for notification_id, event in batch.events:
            blocker = blockers.get(event.originator_id)
            if blocker is None:
                events.append((notification_id, event))
                continue
            record(
                cur,
                name,
                EventRef(
                    notification_id,
                    event.originator_id,
                    event.originator_version,
                    get_topic(type(event)),
                    _org_of(event),
                ),
                f"waits for the dead letter at position {blocker} (same aggregate)",
                0,
                blocked_by=blocker,
            )
        # A rebuild replays history: it adds no spans to old traces.
        traced = (
            (position, event_type(event), getattr(event, "meta", None))
            for position, event in (events if tables is None else ())
        )
        with tracing.event_spans(f"apply {name}", name, traced):
            self.projection.prefetch([event for _, event in events], view)
            for notification_id, event in events:
                self.projection.apply(event, notification_id, view)
            view.flush()
            cur.execute(
                "UPDATE projection_tracking SET position = %s, updated_at = now() WHERE name = %s",
                (batch.last, name),
            )

    def catch_up(
        self,
        conn: psycopg.Connection[Any],
        *,
        tables: Mapping[str, sql.Composable] | None = None,
        tracking: str | None = None,
        upto: int | None = None,
    ) -> int:
        """Run batches until the log is exhausted (or ``upto``); return how many events were read.

        Batches that fail go through the follower policy (retry, isolate,
        dead-letter), into the same tables and tracking row.
        """
        redirected = _Redirected(self, tables, tracking, upto)
        loop = FollowerLoop(redirected, batch_size=self.batch_size, policy=self.policy)
        return loop.catch_up(conn)

    def run_forever(self, stop: threading.Event) -> None:
        """Project live until ``stop`` is set, surviving lost connections and bad events."""
        loop = FollowerLoop(
            self, batch_size=self.batch_size, poll_s=self.poll_interval, policy=self.policy
        )
        loop.run_forever(stop)

    def retry_dead_letters(
        self, conn: psycopg.Connection[Any], letters: list[DeadLetter]
    ) -> RetryOutcome:
        """Re-apply dead-lettered events, each aggregate's in log order, to the live views.

        Every unresolved dead letter of an aggregate named in ``letters`` is
        retried (they wait behind one another). An aggregate whose events all
        apply loses its ``_stale`` marker; one that fails again stops there,
        keeps the events before applied, and is marked stale at that event.
        """
        chains: dict[UUID, list[DeadLetter]] = {}
        with conn.transaction():  # not left open: each aggregate's retry commits on its own
            waiting = list_letters(conn, follower=self.name)
        for letter in waiting:
            chains.setdefault(letter.originator_id, []).append(letter)
        wanted = {letter.originator_id for letter in letters}
        outcome = RetryOutcome()
        for originator_id in sorted(wanted, key=str):
            chain = chains.get(originator_id, [])
            if chain:
                self._retry_chain(conn, originator_id, chain, outcome)
        return outcome

    def _retry_chain(
        self,
        conn: psycopg.Connection[Any],
        originator_id: UUID,
        chain: list[DeadLetter],
        outcome: RetryOutcome,
    ) -> None:
        tables = live_tables(self.projection)
        doc_id = str(originator_id)
        with conn.transaction(), conn.cursor() as cur:
            _lock_tracking(cur, self.name)  # the live projector waits for this retry
            rows = {row[0]: row for row in log_rows(cur, [letter.position for letter in chain])}
            view = ViewBatch(cur, tables)
            applied: list[int] = []
            for letter in chain:
                cur.execute("SAVEPOINT dead_letter_retry")
                try:
                    if not applied:
                        _unmark(view, self.projection.collections, doc_id)
                    _, _, version, topic, state = rows[letter.position]
                    event = decode_event(self.app.mapper, originator_id, version, topic, state)
                    self.projection.prefetch([event], view)
                    self.projection.apply(event, letter.position, view)
                    view.flush()
                except Exception as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT dead_letter_retry")
                    error = describe(exc)
                    failed_again(cur, letter, error)
                    mark_stale(
                        cur,
                        list(tables.values()),
                        doc_id,
                        stale_marker(letter.position, topic, error),
                        replace=True,
                    )
                    outcome.failed.append((letter, error))
                    break
                applied.append(letter.id)
            resolve(cur, applied, "retried")
            outcome.resolved += len(applied)


@dataclass
class RetryOutcome:
    resolved: int = 0
    failed: list[tuple[DeadLetter, str]] = field(default_factory=list)


def _unmark(view: ViewBatch, collections: tuple[str, ...], doc_id: str) -> None:
    for collection in collections:
        document = view.get(collection, doc_id)
        if document is not None and STALE in document.data:
            data = {k: v for k, v in document.data.items() if k != STALE}
            view.put(collection, dataclasses.replace(document, data=data))


def _org_of(event: Any) -> str | None:
    org_id = (getattr(event, "meta", None) or {}).get("org_id")
    return storable(org_id) if isinstance(org_id, str) else None


class _Redirected(Follower):
    """A projector's batches into other tables and another tracking row (rebuilds)."""

    def __init__(
        self,
        projector: Projector,
        tables: Mapping[str, sql.Composable] | None,
        tracking: str | None,
        upto: int | None,
    ) -> None:
        self.projector = projector
        self.tables = tables
        self.tracking = tracking
        self.upto = upto
        self.name = tracking or projector.name
        self.lock_key = projector.lock_key

    def run_batch(self, conn: psycopg.Connection[Any], limit: int) -> int:
        return self.projector.run_batch(
            conn, limit, tables=self.tables, tracking=self.tracking, upto=self.upto
        )

    def skip(self, conn: psycopg.Connection[Any], error: str, attempts: int) -> int | None:
        return self.projector.skip(
            conn, error, attempts, tables=self.tables, tracking=self.tracking
        )


def start_in_thread(projector: Projector, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(
        target=projector.run_forever,
        args=(stop,),
        name=f"projector-{projector.projection.name}",
        daemon=True,
    )
    thread.start()
    return thread


def status(conn: psycopg.Connection[Any], names: list[str]) -> list[ProjectionStatus]:
    """Per projection: position, the log's head, and how far behind it is."""
    head_row = conn.execute(
        f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}"
    ).fetchone()
    head = int(head_row[0]) if head_row else 0
    rows = {
        name: (position, updated_at)
        for name, position, updated_at in conn.execute(
            "SELECT name, position, extract(epoch FROM now() - updated_at) "
            "FROM projection_tracking WHERE name = ANY(%s)",
            (names,),
        ).fetchall()
    }
    result = []
    for name in names:
        position, since = rows.get(name, (0, None))
        behind = head - int(position)
        result.append(
            ProjectionStatus(
                name=name,
                position=int(position),
                head=head,
                lag_events=behind,
                lag_seconds=float(since) if behind and since is not None else 0.0,
            )
        )
    return result


ProgressCallback = Callable[[int], None]
