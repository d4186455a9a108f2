"""Dead letters: the events a follower of the log could not apply, and went past.

When a follower (a projection, the relay, the workflow-runs recorder) still
fails on one event after its retries (``projections/follower.py``), it
records a row in ``dead_letters`` and moves its tracking position past the
event, both in one transaction: every other event, of every organisation,
goes on being applied, exactly once.

A projection does more, so that its documents never lie:

- The aggregate's documents (the ``_id`` equal to the event's originator id,
  in each of the projection's collections) get a ``_stale`` field, which
  reads return as they are::

      "_stale": {"position": 1234, "event": "Workflow.Updated",
                 "error": "TypeError: Integer exceeds 64-bit range"}

  ``position`` is the first event of that aggregate the document misses.
  The marker holds nothing but what the log and the code decide (no time,
  no attempt count), so a rebuild that fails on the same event produces the
  very same document, and ``replay --check`` stays clean.
- Later events of the same aggregate wait behind the dead letter (recorded
  as dead letters too, ``blocked_by`` the first): applying them to a
  document that missed an earlier event would build one that never existed.

``reporunner projections dead-letters retry`` re-applies an aggregate's
waiting events in log order once the cause is fixed; a rebuild retries them
all (whatever now applies is resolved, whatever still fails is recorded again
and marked the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from infrastructure.audit import decode_state, event_org
from infrastructure.eventstore import EVENTS_TABLE

STALE = "_stale"
"""The field a stale document carries (see the module doc)."""

LogRow = tuple[int, UUID, int, str, bytes]
"""(position, originator_id, originator_version, topic, state), as stored."""


@dataclass(frozen=True)
class EventRef:
    """Which event a dead letter is about."""

    position: int
    originator_id: UUID
    version: int
    topic: str
    org_id: str | None

    @classmethod
    def of_row(cls, row: LogRow) -> EventRef:
        position, originator_id, version, topic, state = row
        # The stdlib decoder: the organisation of any state JSON at all, big numbers included.
        org_id = event_org(decode_state(bytes(state)))
        return cls(
            position, originator_id, version, topic, None if org_id is None else storable(org_id)
        )


@dataclass(frozen=True)
class DeadLetter:
    id: int
    follower: str
    position: int
    originator_id: UUID
    originator_version: int
    event: str
    org_id: str | None
    error: str
    attempts: int
    first_seen: datetime
    last_seen: datetime
    blocked_by: int | None
    resolved_at: datetime | None
    resolution: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "follower": self.follower,
            "position": self.position,
            "event_id": f"{self.originator_id}:{self.originator_version}",
            "event": self.event,
            "org_id": self.org_id,
            "error": self.error,
            "attempts": self.attempts,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "blocked_by": self.blocked_by,
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "resolution": self.resolution,
        }


_COLUMNS = (
    "id, follower, position, originator_id, originator_version, topic, org_id, error, "
    "attempts, first_seen, last_seen, blocked_by, resolved_at, resolution"
)


def event_name(topic: str) -> str:
    """``Workflow.Updated`` out of a stored topic (``domain.workflow:Workflow.Updated``)."""
    return topic.rpartition(":")[2]


def describe(exc: BaseException) -> str:
    """An error as a dead letter (and a stale marker) keeps it: type and message."""
    return storable(f"{type(exc).__name__}: {str(exc).strip()}"[:2000])


def storable(text: str) -> str:
    """``text`` as PostgreSQL text and jsonb take it (an error may quote the bad value):
    no NUL, no lone surrogate. Recording a dead letter must not fail on content."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def stale_marker(position: int, topic: str, error: str) -> dict[str, Any]:
    return {"position": position, "event": event_name(topic), "error": error}


def _letter(row: Sequence[Any]) -> DeadLetter:
    values = list(row)
    values[5] = event_name(values[5])
    return DeadLetter(*values)


def record(
    cur: psycopg.Cursor[Any],
    follower: str,
    event: EventRef,
    error: str,
    attempts: int,
    blocked_by: int | None = None,
) -> int:
    """Record (or record again) a dead letter; returns its id.

    ``blocked_by``: the position of the dead letter this event waits behind.
    """
    cur.execute(
        "INSERT INTO dead_letters (follower, position, originator_id, originator_version, "
        "topic, org_id, error, attempts, blocked_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (follower, position) DO UPDATE SET error = EXCLUDED.error, "
        "attempts = dead_letters.attempts + EXCLUDED.attempts, last_seen = now(), "
        "blocked_by = EXCLUDED.blocked_by, resolved_at = NULL, resolution = NULL "
        "RETURNING id",
        (
            follower,
            event.position,
            event.originator_id,
            event.version,
            event.topic,
            event.org_id,
            error,
            attempts,
            blocked_by,
        ),
    )
    found = cur.fetchone()
    assert found is not None
    return int(found[0])


def open_blockers(
    cur: psycopg.Cursor[Any], follower: str, originator_ids: Sequence[UUID]
) -> dict[UUID, int]:
    """Per aggregate with an unresolved dead letter: the first one's position."""
    if not originator_ids:
        return {}
    cur.execute(
        "SELECT originator_id, min(position) FROM dead_letters "
        "WHERE follower = %s AND resolved_at IS NULL AND originator_id = ANY(%s) "
        "GROUP BY originator_id",
        (follower, list(set(originator_ids))),
    )
    return {row[0]: int(row[1]) for row in cur.fetchall()}


SkipHook = Callable[[psycopg.Cursor[Any], LogRow, str], None]
"""What a follower does beside the dead letter (a projection marks documents stale)."""


def skip_next(
    conn: psycopg.Connection[Any],
    follower: str,
    tracking: str,
    error: str,
    attempts: int,
    on_skip: SkipHook | None = None,
) -> int | None:
    """Dead-letter the event right after ``tracking``'s position and move past it.

    One transaction: the dead letter, whatever ``on_skip`` writes, and the
    new position commit together or not at all. Returns the position skipped
    (None: the log has nothing after the position any more).
    """
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(
            "SELECT position FROM projection_tracking WHERE name = %s FOR UPDATE", (tracking,)
        )
        found = cur.fetchone()
        if found is None:
            raise LookupError(f"no tracking row {tracking!r}")
        cur.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {EVENTS_TABLE} WHERE notification_id > %s ORDER BY notification_id LIMIT 1",
            (int(found[0]),),
        )
        event = cur.fetchone()
        if event is None:
            return None
        row: LogRow = (int(event[0]), event[1], int(event[2]), event[3], bytes(event[4]))
        record(cur, follower, EventRef.of_row(row), error, attempts)
        if on_skip is not None:
            on_skip(cur, row, error)
        cur.execute(
            "UPDATE projection_tracking SET position = %s, updated_at = now() WHERE name = %s",
            (row[0], tracking),
        )
        return row[0]


def correlation_at(conn: psycopg.Connection[Any], position: int) -> str | None:
    """The correlation id of the event at ``position``, for a log line; None if none (or unread)."""
    try:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(f"SELECT state FROM {EVENTS_TABLE} WHERE notification_id = %s", (position,))
            row = cur.fetchone()
    except Exception:  # a log line's detail never fails the loop; it sees the connection next
        return None
    state = decode_state(bytes(row[0])) if row else None
    meta = state.get("meta") if isinstance(state, dict) else None
    found = meta.get("correlation_id") if isinstance(meta, dict) else None
    return found if isinstance(found, str) else None


def mark_stale(
    cur: psycopg.Cursor[Any],
    tables: Sequence[sql.Composable],
    doc_id: str,
    marker: dict[str, Any],
    *,
    replace: bool = False,
) -> None:
    """Give the aggregate's documents a ``_stale`` marker; an older one stays unless ``replace``."""
    keep = sql.SQL("" if replace else " AND NOT data ? %s")
    for table in tables:
        cur.execute(
            sql.SQL(
                "UPDATE {} SET data = data || jsonb_build_object(%s::text, %s::jsonb) "
                "WHERE _id = %s{}"
            ).format(table, keep),
            (STALE, Jsonb(marker), doc_id, *(() if replace else (STALE,))),
        )


def list_letters(
    conn: psycopg.Connection[Any],
    *,
    follower: str | None = None,
    letter_id: int | None = None,
    include_resolved: bool = False,
) -> list[DeadLetter]:
    where = ["true"]
    params: list[Any] = []
    if follower is not None:
        where.append("follower = %s")
        params.append(follower)
    if letter_id is not None:
        where.append("id = %s")
        params.append(letter_id)
    if not include_resolved:
        where.append("resolved_at IS NULL")
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM dead_letters WHERE {' AND '.join(where)} "  # type: ignore[arg-type]
        "ORDER BY follower, position",
        params,
    ).fetchall()
    return [_letter(row) for row in rows]


def open_counts(conn: psycopg.Connection[Any], followers: Sequence[str]) -> dict[str, int]:
    """Unresolved dead letters per follower (0 for those with none)."""
    rows = conn.execute(
        "SELECT follower, count(*) FROM dead_letters "
        "WHERE resolved_at IS NULL AND follower = ANY(%s) GROUP BY follower",
        (list(followers),),
    ).fetchall()
    counts = dict.fromkeys(followers, 0)
    counts.update({name: int(count) for name, count in rows})
    return counts


def resolve(cur: psycopg.Cursor[Any], ids: Sequence[int], resolution: str) -> None:
    cur.execute(
        "UPDATE dead_letters SET resolved_at = now(), resolution = %s, last_seen = now() "
        "WHERE id = ANY(%s)",
        (resolution, list(ids)),
    )


def failed_again(cur: psycopg.Cursor[Any], letter: DeadLetter, error: str) -> None:
    """A retry failed on ``letter`` again: count it; it is now what its aggregate waits behind."""
    cur.execute(
        "UPDATE dead_letters SET attempts = attempts + 1, error = %s, last_seen = now(), "
        "blocked_by = NULL WHERE id = %s",
        (error, letter.id),
    )
    cur.execute(
        "UPDATE dead_letters SET blocked_by = %s WHERE follower = %s AND originator_id = %s "
        "AND resolved_at IS NULL AND position > %s",
        (letter.position, letter.follower, letter.originator_id, letter.position),
    )


def log_rows(cur: psycopg.Cursor[Any], positions: Sequence[int]) -> list[LogRow]:
    """The stored events at ``positions``, in log order."""
    cur.execute(
        "SELECT notification_id, originator_id, originator_version, topic, state "
        f"FROM {EVENTS_TABLE} WHERE notification_id = ANY(%s) ORDER BY notification_id",
        (list(positions),),
    )
    return [(int(r[0]), r[1], int(r[2]), r[3], bytes(r[4])) for r in cur.fetchall()]


def forget(cur: psycopg.Cursor[Any], follower: str) -> None:
    """Drop a scratch follower's dead letters (a rebuild's or a verify's, starting over)."""
    cur.execute("DELETE FROM dead_letters WHERE follower = %s", (follower,))


def adopt_rebuild(cur: psycopg.Cursor[Any], follower: str, rebuilt: str, upto: int) -> None:
    """After a rebuild (``rebuilt``'s dead letters) replaced ``follower``'s views up to ``upto``.

    A dead letter the rebuild did not meet again is resolved: the event
    applied this time. Those it met are the follower's again (counted once
    more, marked as the rebuild marked their documents).
    """
    cur.execute(
        "UPDATE dead_letters d SET resolved_at = now(), resolution = 'applied by a rebuild', "
        "last_seen = now() WHERE d.follower = %s AND d.resolved_at IS NULL AND d.position <= %s "
        "AND NOT EXISTS (SELECT 1 FROM dead_letters r WHERE r.follower = %s "
        "AND r.position = d.position)",
        (follower, upto, rebuilt),
    )
    cur.execute(
        "INSERT INTO dead_letters (follower, position, originator_id, originator_version, topic, "
        "org_id, error, attempts, blocked_by) SELECT %s, position, originator_id, "
        "originator_version, topic, org_id, error, attempts, blocked_by FROM dead_letters "
        "WHERE follower = %s ON CONFLICT (follower, position) DO UPDATE SET "
        "error = EXCLUDED.error, attempts = dead_letters.attempts + EXCLUDED.attempts, "
        "last_seen = now(), blocked_by = EXCLUDED.blocked_by, resolved_at = NULL, "
        "resolution = NULL",
        (follower, rebuilt),
    )
    forget(cur, rebuilt)
