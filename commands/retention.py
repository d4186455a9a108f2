"""Retention: destroy the day keys past their window and expire the executions queued then.

One pass, at an instant ``now`` (the CLI's ``--now``, or the scheduler's clock):

1. **Day keys.** Every live day key (scope ``YYYY-MM-DD/<workflow id>``) whose
   day is past its workflow's window is destroyed (``Keyring.destroy``, actor
   ``retention``): the payloads sealed under it read as erased from then on,
   in the log, the views and every copy made from them. Each batch appends a
   ``RetentionRecord.DayKeysDestroyed`` per organisation naming the scopes
   and key ids (no personal data), so the audit trail says what went.
2. **Documents.** Every finished, unpinned execution queued before its
   window's start gets ``Expired`` on its own stream; the executions
   projection prunes its document when it applies that event. Pruning is an
   event, not a DELETE beside the log, so a rebuild (or ``replay --check``)
   meets the same events in the same order and prunes the same documents:
   the rebuilt view equals the live one. The counters are not touched.

Both walk their candidates oldest first in keyset batches of ``batch_size``
(one transaction each), so a pass over millions of executions is many small
steps: the scheduler takes one step per round, and the CLI all of them.
Candidates come from the views, which may lag the log; the decision is the
aggregate's (``Execution.expirable``), so an execution pinned meanwhile, or
expired by a pass before, is passed over, and a pin racing an expiry on the
same stream loses to optimistic concurrency, never both. Re-running a pass
at the same instant changes nothing more.

Pinned executions keep their documents; their payloads were re-sealed under
a pin key when they were pinned (``commands/pins.py``), which retention
never destroys.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import structlog
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from commands.application import WorkflowApplication
from domain.execution import FINISHED_STATUSES, Execution
from domain.meta import EventMeta
from domain.retention import RetentionRecord, first_kept_day, window_start
from infrastructure.keyring import ConnectionSource, KeyPurpose, Keyring
from infrastructure.metrics import RETENTION_EXECUTIONS_PRUNED, RETENTION_KEYS_DESTROYED

log = structlog.get_logger("reporunner.retention")

ACTOR: Final = "retention"
# Each candidate query is bounded: a slow one fails this step, the next tries again.
_QUERY_TIMEOUT_MS: Final = 30_000

# A workflow's own window, else the global one (both validated integers).
_DAYS = "coalesce((w.data #>> '{settings,retention_days}')::int, %(global_days)s)"

_KEY_CANDIDATES = f"""
SELECT k.org_id, k.scope, {_DAYS} AS days
FROM data_keys k
LEFT JOIN doc_workflows w
       ON w.org_id = k.org_id AND w._id = split_part(k.scope, '/', 2)
WHERE k.purpose = 'day' AND k.wrapped IS NOT NULL
  AND (k.org_id, k.scope) > (%(after_org)s, %(after_scope)s)
  AND k.scope ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}/'
  AND {_DAYS} > 0
  AND CASE WHEN k.scope ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}/'
           THEN left(k.scope, 10)::date < %(today)s::date - {_DAYS} END
ORDER BY k.org_id, k.scope
LIMIT %(limit)s
"""

_EXECUTION_CANDIDATES = f"""
SELECT e._id, e.org_id, e.created, {_DAYS} AS days
FROM doc_executions e
LEFT JOIN doc_workflows w ON w.org_id = e.org_id AND w._id = e.data->>'workflow_id'
WHERE (e.created, e._id) > (%(after_created)s, %(after_id)s)
  AND e.created < %(latest_start)s
  AND e.data->>'status' = ANY(%(finished)s)
  AND NOT coalesce((e.data->>'pinned')::boolean, false)
  AND {_DAYS} > 0
  AND e.created < ((%(today)s::date - {_DAYS})::timestamp AT TIME ZONE 'UTC')
ORDER BY e.created, e._id
LIMIT %(limit)s
"""

# The shortest window any workflow has (a workflow's own 0 keeps it for ever).
_SHORTEST_OVERRIDE = (
    "SELECT min((data #>> '{settings,retention_days}')::int) AS days FROM doc_workflows "
    "WHERE (data #>> '{settings,retention_days}')::int > 0"
)

Phase = Literal["keys", "executions", "done"]


@dataclass
class RetentionOutcome:
    """What a pass (or one step of it) did."""

    keys_destroyed: int = 0
    executions_expired: int = 0
    passed_over: int = 0  # candidates the aggregate refused (pinned or expired meanwhile)
    batches: int = 0

    def add(self, other: RetentionOutcome) -> None:
        self.keys_destroyed += other.keys_destroyed
        self.executions_expired += other.executions_expired
        self.passed_over += other.passed_over
        self.batches += other.batches


@dataclass
class RetentionPass:
    """One pass at ``now``, taken a batch at a time (``Retention.step``)."""

    now: datetime
    run_id: str = field(default_factory=lambda: f"retention:{uuid.uuid4()}")
    phase: Phase = "keys"
    after_key: tuple[str, str] = ("", "")
    after_execution: tuple[datetime, str] = (datetime.min.replace(tzinfo=UTC), "")
    latest_start: datetime | None = None
    outcome: RetentionOutcome = field(default_factory=RetentionOutcome)

    @property
    def done(self) -> bool:
        return self.phase == "done"


class Retention:
    """Runs retention passes over the log, the views and the keyring."""

    def __init__(
        self,
        app: WorkflowApplication,
        keyring: Keyring | None,
        *,
        global_days: int,
        batch_size: int,
        connect: ConnectionSource | None = None,
    ) -> None:
        self.app = app
        # Without a master key nothing was sealed: there are no day keys to destroy.
        self.keyring = keyring
        self.global_days = global_days
        self.batch_size = batch_size
        self._connect = connect or app.event_store.datastore.get_connection

    def start(self, now: datetime) -> RetentionPass:
        if now.utcoffset() is None:
            raise ValueError("now must be an aware datetime")
        return RetentionPass(now=now)

    def run(self, now: datetime) -> RetentionOutcome:
        """A whole pass at ``now``, batch after batch."""
        current = self.start(now)
        while not current.done:
            self.step(current)
        log.info(
            "retention pass done",
            now=now.isoformat(),
            keys_destroyed=current.outcome.keys_destroyed,
            executions_expired=current.outcome.executions_expired,
            passed_over=current.outcome.passed_over,
            batches=current.outcome.batches,
        )
        return current.outcome

    def step(self, current: RetentionPass) -> RetentionOutcome:
        """One batch of ``current`` (keys first, then executions), or what it takes to
        find there is none left; advances it."""
        done = RetentionOutcome()
        while not current.done and not done.batches:
            if current.phase == "keys":
                done = self._destroy_keys(current)
            else:
                done = self._expire_executions(current)
        current.outcome.add(done)
        return done

    # -- day keys -----------------------------------------------------------------------

    def _destroy_keys(self, current: RetentionPass) -> RetentionOutcome:
        if self.keyring is None:
            current.phase = "executions"
            return RetentionOutcome()
        rows = self._select(
            _KEY_CANDIDATES,
            {
                "after_org": current.after_key[0],
                "after_scope": current.after_key[1],
                "today": current.now.astimezone(UTC).date(),
            },
        )
        if len(rows) < self.batch_size:
            current.phase = "executions"
        if not rows:
            return RetentionOutcome()
        current.after_key = (rows[-1]["org_id"], rows[-1]["scope"])
        destroyed: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for row in rows:
            key_id = self.keyring.destroy(row["org_id"], KeyPurpose.DAY, row["scope"], ACTOR)
            if key_id is not None:  # else destroyed meanwhile (another pass, an operator)
                destroyed[row["org_id"]].append((row["scope"], key_id))
        # Recorded once destroyed: the log never claims a key gone that is not
        # (were this save lost, data_keys still says who destroyed it, and when).
        records = [
            RetentionRecord.day_keys_destroyed(
                as_of=current.now, day_keys=keys, meta=self._meta(org_id, current)
            )
            for org_id, keys in destroyed.items()
        ]
        if records:
            self.app.save(*records)
        count = sum(len(keys) for keys in destroyed.values())
        RETENTION_KEYS_DESTROYED.inc(count)
        return RetentionOutcome(keys_destroyed=count, batches=1)

    # -- executions ---------------------------------------------------------------------

    def _expire_executions(self, current: RetentionPass) -> RetentionOutcome:
        if current.latest_start is None:
            shortest = self._shortest_window()
            if shortest is None:
                current.phase = "done"  # kept for ever everywhere
                return RetentionOutcome()
            current.latest_start = window_start(current.now, shortest)
        rows = self._select(
            _EXECUTION_CANDIDATES,
            {
                "after_created": current.after_execution[0],
                "after_id": current.after_execution[1],
                "latest_start": current.latest_start,
                "finished": sorted(FINISHED_STATUSES),
                "today": current.now.astimezone(UTC).date(),
            },
        )
        if len(rows) < self.batch_size:
            current.phase = "done"
        if not rows:
            return RetentionOutcome()
        current.after_execution = (rows[-1]["created"], rows[-1]["_id"])
        expiring: list[_Expiry] = []
        passed_over = 0
        for row in rows:
            expiry = _Expiry(
                execution_id=row["_id"],
                as_of=first_kept_day(current.now, row["days"]).isoformat(),
                retention_days=row["days"],
                meta=self._meta(row["org_id"], current),
            )
            execution = self._load(expiry.execution_id)
            if execution is None or not execution.expirable:
                passed_over += 1
                continue
            expiry.apply(execution)
            expiring.append(expiry)
        saved = self._save(expiring)
        RETENTION_EXECUTIONS_PRUNED.inc(saved)
        return RetentionOutcome(
            executions_expired=saved,
            passed_over=passed_over + len(expiring) - saved,
            batches=1,
        )

    def _save(self, expiring: list[_Expiry]) -> int:
        """Save all in one transaction; should one have moved on meanwhile (a pin
        recorded since it was loaded), decide and save each again on its own."""
        if not expiring:
            return 0
        try:
            self.app.save(*(expiry.execution for expiry in expiring))
            return len(expiring)
        except IntegrityError:
            pass
        saved = 0
        for expiry in expiring:
            fresh = self._load(expiry.execution_id)
            if fresh is None or not fresh.expirable:
                continue
            expiry.apply(fresh)
            try:
                self.app.save(fresh)
                saved += 1
            except IntegrityError:
                continue  # moved on again: the next pass looks at it
        return saved

    # -- plumbing -----------------------------------------------------------------------

    def _shortest_window(self) -> int | None:
        rows = self._select(_SHORTEST_OVERRIDE, {}, limit=False)
        windows = [d for d in (rows[0]["days"] if rows else None, self.global_days) if d]
        return min(windows) if windows else None

    def _select(self, query: str, params: dict[str, Any], limit: bool = True) -> list[Any]:
        params = {"global_days": self.global_days, **params}
        if limit:
            params["limit"] = self.batch_size
        with self._connect() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(f"SET LOCAL statement_timeout = {_QUERY_TIMEOUT_MS}")
            cur.execute(query, params)
            return list(cur.fetchall())

    def _load(self, execution_id: str) -> Execution | None:
        try:
            found: object = self.app.repository.get(uuid.UUID(execution_id))
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, Execution) else None

    @staticmethod
    def _meta(org_id: str, current: RetentionPass) -> EventMeta:
        return EventMeta(org_id=org_id, actor=ACTOR, correlation_id=current.run_id)


@dataclass
class _Expiry:
    """One execution's expiry, as decided from its candidate row."""

    execution_id: str
    as_of: str
    retention_days: int
    meta: EventMeta
    execution: Any = None

    def apply(self, execution: Execution) -> None:
        execution.expire(as_of=self.as_of, retention_days=self.retention_days, meta=self.meta)
        self.execution = execution


Clock = Callable[[], datetime]


class PeriodicRetention:
    """Retention as the scheduler's leader runs it: a pass every ``interval``, one
    batch per call of ``step`` so a long pass never holds up the schedules."""

    def __init__(self, retention: Retention, interval: timedelta) -> None:
        self.retention = retention
        self.interval = interval
        self._current: RetentionPass | None = None
        self._next_due: datetime | None = None

    def step(self, now: datetime) -> RetentionOutcome | None:
        """Take the next batch if a pass is under way or due; None if nothing was due."""
        if self._current is None:
            if self._next_due is not None and now < self._next_due:
                return None
            self._current = self.retention.start(now)
        try:
            done = self.retention.step(self._current)
        except Exception:
            # The next round starts the pass again (it is idempotent).
            log.exception("retention step failed; it runs again next interval")
            self._current = None
            self._next_due = now + self.interval
            return None
        if self._current.done:
            outcome = self._current.outcome
            if outcome.keys_destroyed or outcome.executions_expired:
                log.info(
                    "retention pass done",
                    now=self._current.now.isoformat(),
                    keys_destroyed=outcome.keys_destroyed,
                    executions_expired=outcome.executions_expired,
                    passed_over=outcome.passed_over,
                    batches=outcome.batches,
                )
            self._current = None
            self._next_due = now + self.interval
        return done
