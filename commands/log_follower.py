"""The plumbing of a follower that records commands from the log (runs, retries).

Its position is a row of ``projection_tracking``; a batch's commands are
saved with a side statement that moves that row from the position read, so
the records and the move commit together or not at all, and a second
instance that recorded the batch first makes this one read again.
"""

from __future__ import annotations

from typing import Any

import psycopg

from commands.application import WorkflowApplication
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE, SideStatement
from projections.dead_letters import skip_next
from projections.follower import Follower
from projections.follower import connect as follower_connection


class LogCommandFollower(Follower):
    """``name`` and ``columns`` (of the events table) are set by each subclass."""

    columns: str

    def __init__(self, app: WorkflowApplication, batch_size: int, target: PgTarget | None) -> None:
        self.app = app
        self.batch_size = batch_size
        self.target = target

    def connect(self) -> psycopg.Connection[Any]:
        if self.target is None:
            raise RuntimeError(f"the {self.name} follower needs a PgTarget to run live")
        return follower_connection(self.target, f"reporunner-{self.name}")

    def ensure_tracking(self) -> None:
        with self.app.event_store.datastore.get_connection() as conn:
            conn.execute(
                "INSERT INTO projection_tracking (name) VALUES (%s) ON CONFLICT DO NOTHING",
                (self.name,),
            )

    def start(self, conn: psycopg.Connection[Any]) -> None:
        self.ensure_tracking()

    def skip(self, conn: psycopg.Connection[Any], error: str, attempts: int) -> int | None:
        return skip_next(conn, self.name, self.name, error, attempts)

    def next_rows(self, limit: int | None) -> tuple[list[Any], SideStatement | None]:
        """The next events past the position, and the statement that moves it past them."""
        with self.app.event_store.datastore.get_connection() as db, db.cursor() as cur:
            cur.execute("SELECT position FROM projection_tracking WHERE name = %s", (self.name,))
            row = cur.fetchone()
            if row is None:
                raise LookupError(f"no tracking row for {self.name!r}")
            after = int(row["position"])
            cur.execute(
                f"SELECT {self.columns} FROM {EVENTS_TABLE} WHERE notification_id > %s "
                "ORDER BY notification_id LIMIT %s",
                (after, limit or self.batch_size),
            )
            rows = cur.fetchall()
        if not rows:
            return rows, None
        move = SideStatement(
            "UPDATE projection_tracking SET position = %s, updated_at = now() "
            "WHERE name = %s AND position = %s",
            (int(rows[-1]["notification_id"]), self.name, after),
            expect_row=True,
        )
        return rows, move
