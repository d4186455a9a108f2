"""One loop for every follower of the log, with one retry and dead-letter policy.

The projections, the audit chain, the relay and the workflow-runs recorder
all follow the log in order and keep a tracking position. What differs is
only how each applies a batch (``Follower.run_batch``); this module does the
rest, once:

- Leadership: one active instance per follower across processes, by a
  session advisory lock held on a dedicated connection (the lock lives as
  long as that connection, so the loop touches it every round). A standby
  keeps its own lock connection open and tries for the lock every
  ``STANDBY_RETRY_S`` at most, whatever ``poll_s`` is, so it takes over
  within about that long of the holder's death (``lock_session``: also
  when its host, not only its process, dies). The lock only elects; what
  keeps two instances from doing a batch twice is each follower's commit,
  which moves its position only from where it read (see the README's
  "Failover").
- Wake-ups: LISTEN on the event table's NOTIFY channel, with polling every
  ``poll_s`` as the backstop (a LISTEN connection can die silently).
- Lost connections (``Follower.transient``: PostgreSQL or Redis away): drop
  every connection, wait with capped exponential back-off, start over from
  the tracking position. Never counted against an event.
- A batch that fails otherwise (``RetryPolicy``):

  1. retried whole, ``attempts`` times in all, with back-off (a deadlock, a
     statement timeout, a brief bug in a dependency heal this way);
  2. then isolated by halving: the first half is applied, or halved again,
     until the one event that fails alone is found; the good events around
     it are applied in halves, exactly once, as usual;
  3. that event is tried ``attempts`` times alone; if it still fails, the
     follower dead-letters it (``Follower.skip``: the dead letter and the
     move of the tracking position past it commit in one transaction) and
     goes on with the next event. A follower that must never skip (the
     audit chain: a chain with a hole proves nothing) retries forever.

So one event nobody can apply stalls its follower for a few seconds, never
every organisation's views forever. See ``projections/dead_letters.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import psycopg
import structlog
from psycopg import sql

from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE
from infrastructure.metrics import FOLLOWER_ACTIVE, FOLLOWER_BATCH_DURATION, FOLLOWER_EVENTS
from projections.dead_letters import correlation_at, describe

log = structlog.get_logger("reporunner.followers")

# SQLSTATE classes that say "the connection or the server", never "this event":
# connection exceptions, transaction rollbacks (deadlocks, serialisation),
# insufficient resources and operator intervention (shutdowns, cancels).
# Others psycopg also raises as OperationalError, such as 54 (program limits:
# a stack depth or an index row size that one event's content exceeds), go
# through the retry and dead-letter policy like any failing batch.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})

STANDBY_RETRY_S: Final = 0.5
"""The longest a standby waits between two tries for the lock (a query on an open
connection, so cheap): the takeover after a holder dies takes about this long."""


def is_transient(follower: Follower, exc: BaseException) -> bool:
    """Whether ``exc`` means a lost connection (reconnect), not an event that fails."""
    if not isinstance(exc, follower.transient):
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    # No SQLSTATE: the client lost the connection (or never had one).
    return sqlstate is None or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    """Tries of a failing batch, and of the one event it comes down to, before skipping."""
    base_s: float = 0.2
    """The first pause between tries (and reconnections); doubled each time."""
    cap_s: float = 10.0
    """The longest pause."""


class Backoff:
    """Capped exponential back-off: ``base``, ``2 base``, ... at most ``cap``."""

    def __init__(self, base_s: float, cap_s: float) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._next = base_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap_s)
        return delay

    def reset(self) -> None:
        self._next = self.base_s


class Follower:
    """What a follower of the log supplies; the loop does everything else.

    Subclasses set ``name`` and ``lock_key`` and implement ``connect`` and
    ``run_batch``; the rest has defaults.
    """

    name: str
    """Its tracking row (and its dead letters) go by this name."""
    lock_key: str
    """The advisory lock that elects the one active instance."""
    transient: tuple[type[BaseException], ...] = (psycopg.OperationalError,)
    """Errors that mean "a connection is lost", not "this batch cannot be applied"."""

    def connect(self) -> psycopg.Connection[Any]:
        """A new connection: the loop uses one to work, one to listen, one for the lock."""
        raise NotImplementedError

    def start(self, conn: psycopg.Connection[Any]) -> None:
        """Run once per (re)connection, as the leader, before the first batch."""

    def run_batch(self, conn: psycopg.Connection[Any], limit: int) -> int:
        """Apply the next ``limit`` log rows at most, exactly once; return how many were read.

        All of it commits or none of it: a batch that raises changed nothing.
        """
        raise NotImplementedError

    def skip(self, conn: psycopg.Connection[Any], error: str, attempts: int) -> int | None:
        """Dead-letter the next event and move past it; return its position.

        The default never skips: the loop then keeps retrying the event.
        """
        return None

    def active(self, leading: bool) -> None:
        """Told when this instance becomes the leader, or stops being it."""

    def standing_by(self) -> None:
        """Told when another instance holds the lock (this one reached PostgreSQL)."""

    def failing(self, exc: BaseException) -> None:
        """Told of every failure the loop retries."""


Wait = Callable[[float], Any]
"""Sleep for so many seconds; a true answer means "stop" (``stop.wait`` in the loop)."""


class FollowerLoop:
    """Runs one follower: ``catch_up`` for a caller, ``run_forever`` in a thread."""

    def __init__(
        self,
        follower: Follower,
        *,
        batch_size: int,
        poll_s: float = 1.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.follower = follower
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.policy = policy or RetryPolicy()
        self.dead_letters = 0
        """Events this loop dead-lettered since it started."""

    # -- the policy -------------------------------------------------------------------

    def catch_up(
        self, conn: psycopg.Connection[Any], wait: Wait | None = None, stop: Any = None
    ) -> int:
        """Apply batches until the log is exhausted; return how many log rows were read.

        A batch that fails goes through the retry and dead-letter policy;
        transient errors propagate (the caller reconnects).
        """
        pause = wait or _no_wait
        total = 0
        while stop is None or not stop.is_set():
            started = time.perf_counter()
            try:
                count = self.follower.run_batch(conn, self.batch_size)
                if count:
                    self._observe(count, started)
            except Exception as exc:
                if is_transient(self.follower, exc):
                    raise
                try:
                    count = self._recover(conn, exc, pause)
                except _Stopped:
                    break
            if not count:
                break
            total += count
        return total

    def _observe(self, count: int, started: float) -> None:
        name = self.follower.name
        FOLLOWER_BATCH_DURATION.labels(name).observe(time.perf_counter() - started)
        FOLLOWER_EVENTS.labels(name).inc(count)

    def _recover(self, conn: psycopg.Connection[Any], first: Exception, wait: Wait) -> int:
        """A batch failed: retry it, then isolate the event at fault; return rows done."""
        failure = self._retry(conn, first, self.batch_size, wait)
        if isinstance(failure, int):
            return failure
        log.warning(
            "follower batch keeps failing; isolating the event at fault",
            follower=self.follower.name,
            error=str(failure).strip(),
        )
        return self._isolate(conn, self.batch_size, wait)

    def _retry(
        self, conn: psycopg.Connection[Any], error: Exception, limit: int, wait: Wait
    ) -> int | Exception:
        """Try ``limit`` rows again until ``attempts`` tries in all; the rows done, or the error."""
        backoff = Backoff(self.policy.base_s, self.policy.cap_s)
        for _ in range(1, self.policy.attempts):
            self.follower.failing(error)
            _pause(wait, backoff.next())
            try:
                return self.follower.run_batch(conn, limit)
            except Exception as exc:
                if is_transient(self.follower, exc):
                    raise
                error = exc
        return error

    def _isolate(self, conn: psycopg.Connection[Any], size: int, wait: Wait) -> int:
        """Of the next ``size`` rows one fails: apply the others, dead-letter that one."""
        done = 0
        limit = (size + 1) // 2  # all of them just failed
        while done < size:
            limit = min(limit, size - done)
            try:
                count = self.follower.run_batch(conn, limit)
            except Exception as exc:
                if is_transient(self.follower, exc):
                    raise
                if limit > 1:
                    limit = (limit + 1) // 2
                    continue
                count = self._one_event(conn, exc, wait)
            if not count:
                break
            done += count
            limit = size - done  # past the bad one, whole again
        return done

    def _one_event(self, conn: psycopg.Connection[Any], error: Exception, wait: Wait) -> int:
        """The next event fails alone: retry it, then dead-letter it; return 1 (or 0: done)."""
        retried = self._retry(conn, error, 1, wait)
        if isinstance(retried, int):
            return retried
        skipped = self.follower.skip(conn, describe(retried), self.policy.attempts)
        if skipped is not None:
            self.dead_letters += 1
            log.error(
                "follower dead-lettered an event it cannot apply, and goes on",
                follower=self.follower.name,
                position=skipped,
                correlation_id=correlation_at(conn, skipped),
                attempts=self.policy.attempts,
                error=describe(retried),
            )
            return 1
        # A follower that may never skip: keep trying, at the capped pace.
        log.error(
            "follower cannot apply an event and may not skip it; retrying",
            follower=self.follower.name,
            error=describe(retried),
        )
        backoff = Backoff(self.policy.base_s, self.policy.cap_s)
        while True:
            self.follower.failing(retried)
            _pause(wait, backoff.next())
            try:
                return self.follower.run_batch(conn, 1)
            except Exception as exc:
                if is_transient(self.follower, exc):
                    raise
                retried = exc

    # -- running ----------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        """Follow the log until ``stop`` is set, surviving lost connections."""
        backoff = Backoff(self.policy.base_s, self.policy.cap_s)
        try:
            while not stop.is_set():
                try:
                    self._run_while_leader(stop, backoff)
                except Exception as exc:
                    retry_in = backoff.next()
                    log.warning(
                        "follower lost a connection or cannot start; reconnecting",
                        follower=self.follower.name,
                        error=f"{type(exc).__name__}: {str(exc).strip()}",
                        retry_in_s=retry_in,
                    )
                    self._leading(False)
                    self.follower.failing(exc)
                    stop.wait(retry_in)
        finally:
            self._leading(False)

    def _run_while_leader(self, stop: threading.Event, backoff: Backoff) -> None:
        with self.follower.connect() as lock_conn:
            lock_session(lock_conn)
            standing_by = False
            while not try_lock(lock_conn, self.follower.lock_key):
                if not standing_by:
                    # Another process follows; stand by to take over.
                    log.info("follower standing by", follower=self.follower.name)
                    self._leading(False)
                    self.follower.standing_by()
                    standing_by = True
                backoff.reset()  # the lock connection works: an outage later starts small
                if stop.wait(min(self.poll_s, STANDBY_RETRY_S)):
                    return
            with self.follower.connect() as work_conn, self.follower.connect() as listen_conn:
                listen_conn.autocommit = True
                listen_conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_TABLE)))
                self.follower.start(work_conn)
                log.info("follower active", follower=self.follower.name)
                self._leading(True)
                while not stop.is_set():
                    self.catch_up(work_conn, stop.wait, stop)
                    backoff.reset()  # a round went through: the next outage starts small
                    self._wait_for_events(listen_conn, stop)
                    # The lock lives as long as this connection: touch it, and make sure
                    # this session still holds it (a pooled session would not).
                    ensure_lock(lock_conn, self.follower.lock_key)

    def _wait_for_events(self, listen_conn: psycopg.Connection[Any], stop: threading.Event) -> None:
        """Until a NOTIFY (one per committed write), or ``poll_s`` regardless.

        Listened in slices, so a stop (SIGTERM in a rolling restart) ends the
        wait at once: the lock is freed when the process exits, and a long
        ``poll_s`` would otherwise hold up the standby's takeover by as much.
        """
        deadline = time.monotonic() + self.poll_s
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            notified = False
            for _ in listen_conn.notifies(timeout=min(remaining, STANDBY_RETRY_S), stop_after=1):
                notified = True
            if notified:
                return

    def _leading(self, leading: bool) -> None:
        FOLLOWER_ACTIVE.labels(self.follower.name).set(1 if leading else 0)
        self.follower.active(leading)


class _Stopped(Exception):
    """The loop was told to stop while it waited to retry."""


def _pause(wait: Wait, seconds: float) -> None:
    if wait(seconds):  # ``stop.wait`` answers True once stop is set
        raise _Stopped


def _no_wait(_seconds: float) -> bool:
    return False


def start_in_thread(
    follower: Follower,
    stop: threading.Event,
    *,
    batch_size: int,
    poll_s: float = 1.0,
    policy: RetryPolicy | None = None,
) -> threading.Thread:
    """Run a follower's loop in a daemon thread until ``stop`` is set."""
    loop = FollowerLoop(follower, batch_size=batch_size, poll_s=poll_s, policy=policy)
    thread = threading.Thread(
        target=loop.run_forever, args=(stop,), name=f"follower-{follower.name}", daemon=True
    )
    thread.start()
    return thread


def connect(target: PgTarget, application_name: str, **options: Any) -> psycopg.Connection[Any]:
    """A follower's connection to PostgreSQL."""
    # As defaults: the URL's own connect_timeout and application_name win.
    return psycopg.connect(
        target.conninfo(connect_timeout=5, application_name=application_name), **options
    )


# When the holder's host vanishes (power, network) rather than its process, no
# FIN reaches PostgreSQL, and an idle session would hold its lock for the OS's
# keepalive time (two hours by default). These end the session, and free the
# lock, about idle + interval x count seconds after the host went silent; a
# live host's kernel answers the probes however busy the process, so a live
# holder is never cut off (short of a network cut that long).
_LOCK_SESSION_KEEPALIVES = {
    "tcp_keepalives_idle": "2",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "2",
}


def lock_session(conn: psycopg.Connection[Any]) -> None:
    """Make ``conn`` a connection fit to hold a session advisory lock.

    Autocommit (no transaction left open beside the lock), and server-side
    TCP keepalives that end it soon after its client's host is gone
    (ignored over a Unix socket, where a dead peer is seen at once).
    """
    conn.autocommit = True
    settings = ", ".join("set_config(%s, %s, false)" for _ in _LOCK_SESSION_KEEPALIVES)
    values = [part for pair in _LOCK_SESSION_KEEPALIVES.items() for part in pair]
    conn.execute(f"SELECT {settings}", values)


def try_lock(conn: psycopg.Connection[Any], key: str) -> bool:
    """Take the session advisory lock ``key`` if free; whether this session holds it."""
    row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
    return bool(row and row[0])


class LockLost(RuntimeError):
    """The session that took a leader's lock no longer holds it."""


def ensure_lock(conn: psycopg.Connection[Any], key: str) -> None:
    """Raise ``LockLost`` unless this session holds the advisory lock ``key``.

    It can only lose it without an error if its connection is not its own:
    a transaction-mode pool (PgBouncer) runs each statement on whichever
    server session is free, so the lock stays with a session other clients
    use. The loop then stands down and tries again: never two leaders
    believing they hold one lock for long.
    """
    # pg_try_advisory_lock(bigint) shows in pg_locks as the key's high and low 32 bits.
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks, (SELECT hashtext(%s)::bigint AS key) AS lock "
        "WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND pid = pg_backend_pid() "
        "AND classid = ((lock.key >> 32) & 4294967295)::oid "
        "AND objid = (lock.key & 4294967295)::oid)",
        (key,),
    ).fetchone()
    if not row or not row[0]:
        raise LockLost(
            f"this session no longer holds the lock {key!r}: is a transaction-mode pool "
            "(PgBouncer) between this process and PostgreSQL? The followers and the "
            "scheduler need sessions of their own (a direct connection, or session mode)"
        )
