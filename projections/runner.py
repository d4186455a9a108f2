"""Projectors: consume the event log in order and keep document views up to date.

- Exactly-once: each batch reads its tracking row ``FOR UPDATE``, applies many
  events, writes the documents and the new position, and commits, all in one
  transaction. A crash loses the whole batch or nothing.
- Order without skips: eventsourcing's writers commit positions in order
  (table lock), so everything below the highest visible position is visible.
- Live tail: woken by LISTEN/NOTIFY, with a polling backstop because a LISTEN
  connection can die silently; every connection failure reconnects with
  backoff and resumes from the tracking position.
- One active projector per projection across processes: a session advisory
  lock held on a dedicated connection; the others wait and take over.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import psycopg
import structlog
from eventsourcing.utils import get_topic
from psycopg import sql
from psycopg.types.json import set_json_dumps, set_json_loads

from commands.application import WorkflowApplication
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE, decode_event
from projections.store import DocumentCache, ViewBatch, collection_table

log = structlog.get_logger("reporunner.projections")


class Projection(Protocol):
    name: str
    collections: tuple[str, ...]
    topics: tuple[type, ...]

    def prefetch(self, events: Any, view: ViewBatch) -> None: ...

    def apply(self, event: Any, position: int, view: ViewBatch) -> None: ...


def live_tables(projection: Projection) -> dict[str, sql.Composable]:
    return {c: sql.Identifier(collection_table(c)) for c in projection.collections}


@dataclass(frozen=True)
class EventBatch:
    """Events after position ``after`` up to ``last``; ``events`` are the ones we read."""

    after: int
    last: int
    count: int
    events: list[tuple[int, Any]]


# A JSON escape of U+0000: preceded by an even number of backslashes (each pair
# is an escaped backslash), so the text "\\u0000" (a literal backslash) is kept.
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _orjson_text(value: Any) -> str:
    """JSON for jsonb. jsonb refuses U+0000, and one such string in one event
    would stall the projection forever, so views hold U+FFFD instead (the log
    keeps the original)."""
    text = orjson.dumps(value).decode()
    if "\\u0000" in text:
        text = _NUL_ESCAPE.sub(r"\1\\ufffd", text)
    return text


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


class Projector:
    """Runs one projection over the log."""

    def __init__(
        self,
        app: WorkflowApplication,
        target: PgTarget,
        projection: Projection,
        *,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
    ) -> None:
        self.app = app
        self.target = target
        self.projection = projection
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._topics = {get_topic(cls) for cls in projection.topics}

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self.target.conninfo(
                connect_timeout=5,
                application_name=f"reporunner-projector:{self.projection.name}",
            ),
            autocommit=autocommit,
        )
        # Documents cross as jsonb on every batch: orjson both ways.
        set_json_loads(orjson.loads, conn)
        set_json_dumps(_orjson_text, conn)
        return conn

    def ensure_tracking(self, conn: psycopg.Connection[Any], name: str | None = None) -> None:
        with conn.transaction():
            conn.execute(
                "INSERT INTO projection_tracking (name) VALUES (%s) ON CONFLICT DO NOTHING",
                (name or self.projection.name,),
            )

    def run_batch(
        self,
        conn: psycopg.Connection[Any],
        *,
        tables: Mapping[str, sql.Composable] | None = None,
        tracking: str | None = None,
        limit: int | None = None,
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

    def read_events(
        self, cur: psycopg.Cursor[Any], after: int, limit: int, upto: int | None = None
    ) -> EventBatch:
        """The next ``limit`` events after ``after``, decoded where this projection reads them."""
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
            if topic in self._topics
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
        self.projection.prefetch([event for _, event in batch.events], view)
        for notification_id, event in batch.events:
            self.projection.apply(event, notification_id, view)
        view.flush()
        cur.execute(
            "UPDATE projection_tracking SET position = %s, updated_at = now() WHERE name = %s",
            (batch.last, name),
        )

    def catch_up(self, conn: psycopg.Connection[Any], **kwargs: Any) -> int:
        """Run batches until the log is exhausted; return how many events were read."""
        total = 0
        while count := self.run_batch(conn, **kwargs):
            total += count
        return total

    def run_forever(self, stop: threading.Event) -> None:
        """Project live until ``stop`` is set, surviving lost connections."""
        backoff = 0.5
        while not stop.is_set():
            try:
                self._run_while_leader(stop)
                backoff = 0.5
            except psycopg.OperationalError as exc:
                log.warning(
                    "projector lost its database connection; reconnecting",
                    projection=self.projection.name,
                    error=str(exc).strip(),
                    retry_in_s=backoff,
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:
                # A batch that fails rolls back whole; retry it after a pause rather
                # than die. A poison event shows as growing lag in `projections status`.
                log.exception("projector batch failed; retrying", projection=self.projection.name)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _run_while_leader(self, stop: threading.Event) -> None:
        with self.connect(autocommit=True) as lock_conn:
            locked = lock_conn.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s))", (f"projection:{self.projection.name}",)
            ).fetchone()
            if not locked or not locked[0]:
                # Another process projects this; wait and try to take over.
                stop.wait(self.poll_interval)
                return
            log.info("projector active", projection=self.projection.name)
            with self.connect() as work_conn, self.connect(autocommit=True) as listen_conn:
                self.ensure_tracking(work_conn)
                listen_conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_TABLE)))
                while not stop.is_set():
                    self.catch_up(work_conn)
                    # Wake on NOTIFY, or after poll_interval regardless.
                    for _ in listen_conn.notifies(timeout=self.poll_interval, stop_after=1):
                        pass
                    lock_conn.execute("SELECT 1")  # the lock lives as long as this connection


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
