"""The follower loop's retry and dead-letter policy, over an in-memory log.

The policy is pure control flow over ``Follower.run_batch`` and
``Follower.skip``; the follower here is a list, so every path can be driven
exactly. The real followers (PostgreSQL, Redis) are tested in
``tests/integration/test_dead_letters.py``.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.follower import Backoff, Follower, FollowerLoop, RetryPolicy, is_transient


class Lost(Exception):
    """A connection error (transient)."""


class ListFollower(Follower):
    """Events 1..n; a batch fails whole if it holds an event that fails (as a rollback)."""

    name = "list"
    lock_key = "list"
    transient = (Lost,)

    def __init__(
        self, size: int, bad: set[int] = frozenset(), flaky: dict[int, int] | None = None
    ) -> None:
        self.size = size
        self.bad = set(bad)
        self.flaky = dict(flaky or {})
        self.position = 0
        self.applied: list[int] = []
        self.dead: list[tuple[int, int, str]] = []
        self.batches = 0
        self.may_skip = True
        self.lost_once = False

    def run_batch(self, conn: Any, limit: int) -> int:
        self.batches += 1
        if self.lost_once:
            self.lost_once = False
            raise Lost("connection reset")
        rows = list(range(self.position + 1, min(self.position + limit, self.size) + 1))
        for position in rows:
            if position in self.bad:
                raise ValueError(f"cannot apply {position}")
            if self.flaky.get(position):
                self.flaky[position] -= 1
                raise ValueError(f"not yet {position}")
        self.applied.extend(rows)  # "commit": all of the batch or nothing
        self.position += len(rows)
        return len(rows)

    def skip(self, conn: Any, error: str, attempts: int) -> int | None:
        if not self.may_skip:
            return None
        self.position += 1
        self.dead.append((self.position, attempts, error))
        return self.position


def _run(follower: ListFollower, batch_size: int = 10, attempts: int = 3) -> list[float]:
    waits: list[float] = []
    loop = FollowerLoop(follower, batch_size=batch_size, policy=RetryPolicy(attempts, 0.1, 0.4))
    loop.catch_up(None, waits.append)  # type: ignore[arg-type]
    return waits


def test_one_bad_event_among_good_ones_is_dead_lettered_once_and_the_rest_applied() -> None:
    follower = ListFollower(25, bad={14})

    waits = _run(follower, batch_size=10, attempts=3)

    assert follower.applied == [p for p in range(1, 26) if p != 14]
    assert follower.dead == [(14, 3, "ValueError: cannot apply 14")]
    assert follower.position == 25
    # The batch (11..20) was tried 3 times, then 14 alone 3 times: two back-offs each.
    assert waits == [0.1, 0.2, 0.1, 0.2]


def test_a_batch_that_heals_within_its_attempts_loses_nothing() -> None:
    follower = ListFollower(30, flaky={5: 2})

    waits = _run(follower, batch_size=10, attempts=3)

    assert follower.applied == list(range(1, 31))
    assert follower.dead == []
    assert waits == [0.1, 0.2]


def test_an_event_that_heals_after_the_batch_attempts_is_applied_not_skipped() -> None:
    # The batch fails 3 times (its attempts), the halving twice more, then the
    # event alone heals on its second try.
    follower = ListFollower(10, flaky={3: 5})

    _run(follower, batch_size=10, attempts=3)

    assert follower.applied == list(range(1, 11))
    assert follower.dead == []


def test_attempts_of_one_dead_letters_at_the_first_failure_without_waiting() -> None:
    follower = ListFollower(8, bad={1, 8})

    waits = _run(follower, batch_size=4, attempts=1)

    assert follower.applied == [2, 3, 4, 5, 6, 7]
    assert [position for position, _, _ in follower.dead] == [1, 8]
    assert [attempts for _, attempts, _ in follower.dead] == [1, 1]
    assert waits == []


def test_a_lost_connection_is_not_held_against_the_batch() -> None:
    follower = ListFollower(5)
    follower.lost_once = True
    loop = FollowerLoop(follower, batch_size=10, policy=RetryPolicy(3, 0.1, 0.4))

    with pytest.raises(Lost):
        loop.catch_up(None)  # type: ignore[arg-type]
    assert follower.applied == [] and follower.dead == []

    loop.catch_up(None)  # type: ignore[arg-type]  # the caller reconnected
    assert follower.applied == [1, 2, 3, 4, 5]


def test_a_follower_that_may_not_skip_keeps_retrying_until_the_event_applies() -> None:
    follower = ListFollower(4, flaky={2: 12})
    follower.may_skip = False

    waits = _run(follower, batch_size=4, attempts=2)

    assert follower.applied == [1, 2, 3, 4]
    assert follower.dead == []
    assert waits[-3:] == [0.4, 0.4, 0.4]  # capped


def test_a_stop_while_waiting_to_retry_ends_the_catch_up() -> None:
    follower = ListFollower(4, bad={2})
    follower.may_skip = False
    loop = FollowerLoop(follower, batch_size=4, policy=RetryPolicy(2, 0.1, 0.4))
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) >= 5  # "stop" was set meanwhile

    assert loop.catch_up(None, wait) == 0  # type: ignore[arg-type]
    assert follower.applied == [1] and follower.dead == []


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(0, 60),
    bad=st.sets(st.integers(1, 60), max_size=8),
    batch_size=st.integers(1, 17),
    attempts=st.integers(1, 4),
)
def test_every_good_event_applies_once_in_order_and_every_bad_one_is_dead_lettered_once(
    size: int, bad: set[int], batch_size: int, attempts: int
) -> None:
    bad = {p for p in bad if p <= size}
    follower = ListFollower(size, bad=bad)

    _run(follower, batch_size=batch_size, attempts=attempts)

    assert follower.applied == [p for p in range(1, size + 1) if p not in bad]
    assert [position for position, _, _ in follower.dead] == sorted(bad)
    assert all(count == attempts for _, count, _ in follower.dead)
    assert follower.position == size


class _Program(ListFollower):
    """Its events fail as PostgreSQL fails on content past a program limit (SQLSTATE 54001)."""

    transient = (psycopg.OperationalError,)

    def run_batch(self, conn: Any, limit: int) -> int:
        try:
            return super().run_batch(conn, limit)
        except ValueError as exc:
            raise psycopg.errors.StatementTooComplex(str(exc)) from None


def test_an_operational_error_about_content_is_dead_lettered_not_a_reconnect() -> None:
    follower = _Program(5, bad={3})
    _run(follower, batch_size=5, attempts=2)
    assert follower.applied == [1, 2, 4, 5]
    assert [position for position, _, _ in follower.dead] == [3]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (psycopg.errors.DeadlockDetected("deadlock detected"), True),
        (psycopg.errors.StatementTooComplex("stack depth limit exceeded"), False),
        (psycopg.errors.ProgramLimitExceeded("index row size exceeds maximum"), False),
        (ValueError("not a database error"), False),
    ],
)
def test_which_errors_mean_a_lost_connection(error: Exception, transient: bool) -> None:
    assert is_transient(_Program(1), error) is transient
