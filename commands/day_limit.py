"""``executions_per_day`` for the runs followers record: schedule fires and automatic retries.

The write API counts the runs it starts (``write_api/limits.py``). The
scheduler and the auto-retrier record theirs from the log, so they take
from the same counter (``organisation_day_executions``) in the very
transaction that records the run: a side statement that must touch its row,
so a save past the limit fails and records nothing (``IntegrityError``, as
for a race). What is left is read first, so the usual refusal is a decision
the follower records or logs, not a failed save:

- a schedule instant past the limit is ``Skipped`` with the limit as its
  reason (a buffered one waits for room);
- an automatic retry past the limit, or of a suspended organisation, is
  not queued, and the log says why; the failed execution stays failed and
  can be retried by hand (tomorrow, or once reinstated).

Counted only while a limit applies: the organisation's own, else the
global setting; 0 means none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from commands.application import WorkflowApplication
from infrastructure.eventstore import SideStatement

_TAKE = (
    "INSERT INTO organisation_day_executions AS c (org_id, day, executions) "
    "VALUES (%s, %s, 1) ON CONFLICT (org_id, day) DO UPDATE "
    "SET executions = c.executions + 1 WHERE c.executions < %s"
)


@dataclass(frozen=True)
class DayRoom:
    """What an organisation may still start today (UTC)."""

    org_id: str
    day: date
    limit: int
    """0: no limit applies."""
    left: int
    suspended: bool = False
    """A suspended organisation starts nothing (its schedules are down too)."""

    @property
    def limited(self) -> bool:
        return self.limit > 0

    def take(self) -> SideStatement:
        """One run taken from the counter, in the save that records the run (under
        the log's lock: two groups taking two organisations' rows in opposite
        orders could otherwise deadlock)."""
        return SideStatement(
            _TAKE, (self.org_id, self.day, self.limit), expect_row=True, after_lock=True
        )

    def refusal(self) -> str:
        return (
            f"organisation '{self.org_id}' has run {self.limit} executions today (UTC), "
            "its limit executions_per_day"
        )


class DayLimit:
    def __init__(self, app: WorkflowApplication, default_limit: int = 0) -> None:
        self.app = app
        self.default_limit = default_limit

    def room(self, org_id: str, now: datetime | None = None) -> DayRoom:
        day = (now or datetime.now(UTC)).astimezone(UTC).date()
        with self.app.event_store.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "SELECT o.limits->>'executions_per_day' AS own, o.status = 'suspended' AS "
                "suspended, (SELECT executions FROM organisation_day_executions "
                "WHERE org_id = %s AND day = %s) AS taken FROM (SELECT 1) AS one "
                "LEFT JOIN organisations o ON o.org_id = %s",
                (org_id, day, org_id),
            )
            row = curs.fetchone()
        assert row is not None  # one row, whatever is recorded
        limit = int(self.default_limit if row["own"] is None else row["own"])
        left = max(0, limit - (row["taken"] or 0)) if limit > 0 else 0
        return DayRoom(org_id, day, limit, left, suspended=bool(row["suspended"]))
