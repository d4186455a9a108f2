"""The scheduler role: one active process across the deployment fires the schedule triggers.

- Leadership: a session advisory lock on a dedicated connection, like the
  followers' (``projections/follower.py``). Standbys try for it every tick
  (at most every ``STANDBY_RETRY_S``, however long the tick); when the
  leader dies (``kill -9`` included) PostgreSQL ends its session and frees
  the lock, and a standby takes over at its next try. Were two
  to act at once (a leader cut off from its lock connection but not from
  the log), the instants' execution ids still collide: never a double fire.
- State: the ``ScheduleIndex`` (every process follows the log, standbys
  too, so a new leader starts current) and, per trigger, its ``Timetable``
  in the log. Nothing else: a restart, a failover or a crash loses nothing
  the log does not hold.
- Each tick looks only at the triggers that may have something due (an
  instant passed since it last looked, its workflow changed, or an instant
  waits behind a running one), oldest first, and stops after ``max_fires``
  executions or ``budget_s`` seconds; the rest wait for the next tick. One
  trigger that fails is logged and looked at again later; the others go on.
- Retention (``commands/retention.py``) rides on the same leadership: after
  each tick the leader takes one bounded retention batch when a pass is due
  or under way, so exactly one process runs it and schedules never wait
  long behind it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

import psycopg
import structlog
from eventsourcing.persistence import IntegrityError

from commands.application import WorkflowApplication
from commands.retention import PeriodicRetention
from commands.schedules import ScheduleFiring, TickResult
from infrastructure.database import PgTarget
from infrastructure.metrics import FOLLOWER_ACTIVE, SCHEDULER_LAST_TICK, SCHEDULER_TICKS
from projections.follower import (
    STANDBY_RETRY_S,
    Backoff,
    connect,
    ensure_lock,
    lock_session,
    try_lock,
)
from projections.schedule_index import ScheduleIndex

log = structlog.get_logger("reporunner.scheduler")

LOCK_KEY: Final = "scheduler"
# A trigger whose tick failed (not a race) is looked at again this much later.
_FAILED_RETRY: Final = timedelta(seconds=5)

Clock = Callable[[], datetime]


# Bounds the per-tick look-up of suspended organisations.
_SUSPENDED_MAX = 100_000


def utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self,
        app: WorkflowApplication,
        target: PgTarget,
        *,
        tick_s: float,
        grace: timedelta,
        max_fires: int,
        budget_s: float = 1.0,
        clock: Clock = utc_now,
        executions_per_day: int = 0,
    ) -> None:
        self.target = target
        self.tick_s = tick_s
        self.max_fires = max_fires
        self.budget_s = budget_s
        self.clock = clock
        self.app = app
        self.firing = ScheduleFiring(app, grace=grace, executions_per_day=executions_per_day)
        self.index = ScheduleIndex(app)
        self._leading = False
        self.started_at = time.monotonic()
        self.last_round = 0.0  # monotonic time of the last completed round, 0 before the first
        # When each trigger is next looked at; one not here is looked at now.
        self._checks: dict[tuple[UUID, str], datetime] = {}
        self.retention: PeriodicRetention | None = None

    @property
    def leading(self) -> bool:
        return self._leading

    @leading.setter
    def leading(self, leading: bool) -> None:
        FOLLOWER_ACTIVE.labels(LOCK_KEY).set(1 if leading else 0)
        self._leading = leading

    def status(self) -> str:
        return "leader" if self.leading else "standby"

    # -- one round ------------------------------------------------------------------

    def follow(self) -> None:
        """Bring the index up to the log; a changed workflow's triggers are looked at now."""
        changed = self.index.catch_up()
        for key in [key for key in self._checks if key[0] in changed]:
            del self._checks[key]

    def tick(self, now: datetime) -> int:
        """Fire what is due at ``now`` (as the leader); return how many executions it queued."""
        # A suspended organisation's schedules are down, as in downtime: reinstated, each
        # trigger's grace and catch_up policy decide about the instants it missed.
        suspended = self._suspended_orgs()
        triggers = {
            (t.workflow_id, t.node_id): t
            for t in self.index.triggers()
            if self.index.workflows[t.workflow_id].org_id not in suspended
        }
        for gone in self._checks.keys() - triggers.keys():
            del self._checks[gone]
        due = sorted(
            (self._checks.get(key, now), key)
            for key in triggers
            if self._checks.get(key, now) <= now
        )
        started = time.monotonic()
        fired = 0
        for _, key in due:
            if fired >= self.max_fires or time.monotonic() - started > self.budget_s:
                break  # the rest are still due next tick, first in line
            trigger = triggers[key]
            bound = log.bind(workflow_id=str(key[0]), node_id=key[1])
            try:
                result = self.firing.tick(key[0], key[1], now, max_fires=self.max_fires - fired)
            except IntegrityError:
                # Another scheduler recorded a decision first: look again next tick.
                bound.info("schedule decided elsewhere first")
                self._checks[key] = now
                continue
            except Exception:
                bound.exception("schedule tick failed; the other schedules go on")
                self._checks[key] = now + _FAILED_RETRY
                continue
            fired += len(result.fired)
            self._count(result, now)
            if result.fired or result.skipped or result.missed:
                bound.info(
                    "schedule ticked",
                    fired=[instant.isoformat() for instant in result.fired],
                    skipped=result.skipped,
                    missed=result.missed,
                )
            if result.waiting or result.more:
                self._checks[key] = now  # again next tick
            else:
                self._checks[key] = trigger.schedule.next_after(now)
        return fired

    def _suspended_orgs(self) -> set[str]:
        with self.app.event_store.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "SELECT org_id FROM organisations WHERE status = 'suspended' LIMIT %s",
                (_SUSPENDED_MAX,),
            )
            return {row["org_id"] for row in curs.fetchall()}

    def _count(self, result: TickResult, now: datetime) -> None:
        # Fired more than a couple of ticks after its instant: a catch-up after downtime.
        late = timedelta(seconds=2 * self.tick_s + 1)
        caught_up = sum(1 for instant in result.fired if now - instant > late)
        if caught_up:
            SCHEDULER_TICKS.labels("caught_up").inc(caught_up)
        if len(result.fired) > caught_up:
            SCHEDULER_TICKS.labels("fired").inc(len(result.fired) - caught_up)
        # Overlap skips, and a range the catch-up policy gave up counted once.
        skipped = result.skipped + (1 if result.missed else 0)
        if skipped:
            SCHEDULER_TICKS.labels("skipped").inc(skipped)

    def problem(self) -> str | None:
        """Why this process's scheduler is not doing its work, if it is not."""
        if self.last_round == 0.0:
            return None if self.started_at > time.monotonic() - 30 else "never connected"
        silent = time.monotonic() - self.last_round
        if silent > max(30.0, 10 * self.tick_s):
            return f"no round for {silent:.0f} s (cannot reach the database?)"
        return None

    # -- running --------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        """Follow the log and, while holding the lock, tick every ``tick_s`` until ``stop``."""
        backoff = Backoff(0.2, 10.0)
        try:
            while not stop.is_set():
                try:
                    with connect(self.target, "reporunner-scheduler") as conn:
                        lock_session(conn)
                        self._run_connected(conn, stop, backoff)
                except Exception as exc:
                    self.leading = False
                    retry_in = backoff.next()
                    log.warning(
                        "scheduler lost a connection or cannot start; reconnecting",
                        error=f"{type(exc).__name__}: {str(exc).strip()}",
                        retry_in_s=retry_in,
                    )
                    stop.wait(retry_in)
        finally:
            self.leading = False

    def _run_connected(
        self, lock_conn: psycopg.Connection[Any], stop: threading.Event, backoff: Backoff
    ) -> None:
        while not stop.is_set():
            self.follow()
            if self.leading:
                ensure_lock(lock_conn, LOCK_KEY)  # the lock lives as long as this connection
            elif self.index.caught_up and try_lock(lock_conn, LOCK_KEY):
                self.leading = True
                self._checks.clear()  # another leader may have decided meanwhile
                log.info("scheduler active")
            if self.leading:
                now = self.clock()
                self.tick(now)
                SCHEDULER_LAST_TICK.set(time.time())
                if self.retention is not None:
                    self.retention.step(now)
            self.last_round = time.monotonic()
            backoff.reset()
            stop.wait(self.tick_s if self.leading else min(self.tick_s, STANDBY_RETRY_S))


def start_scheduler(scheduler: Scheduler, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(
        target=scheduler.run_forever, args=(stop,), name="scheduler", daemon=True
    )
    thread.start()
    return thread
