"""A workflow's automatic retry policy: which endings are retried, after how long, how often."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from domain.auto_retry import AutoRetry
from domain.definition import MAX_AUTO_RETRY_ATTEMPTS, MAX_AUTO_RETRY_BACKOFF_MS

ENDED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_no_setting_no_policy() -> None:
    assert AutoRetry.of({}) is None
    assert AutoRetry.of({"timeout_ms": 5}) is None


def test_failed_is_retried_by_default_and_crashed_only_when_asked() -> None:
    default = AutoRetry.of({"retry": {"max_attempts": 3, "backoff_ms": 100}})
    assert default is not None and default.on == {"failed"}
    assert default.delay_ms("failed", 1) == 100
    assert default.delay_ms("crashed", 1) is None
    both = AutoRetry.of({"retry": {"max_attempts": 3, "backoff_ms": 100, "on": ["crashed"]}})
    assert both is not None
    assert (both.delay_ms("crashed", 1), both.delay_ms("failed", 1)) == (100, None)
    assert both.delay_ms("canceled", 1) is None and default.delay_ms("canceled", 1) is None


def test_the_back_off_doubles_and_stops_at_the_last_attempt() -> None:
    policy = AutoRetry(max_attempts=4, backoff_ms=250, on=frozenset({"failed"}))
    assert [policy.delay_ms("failed", n) for n in range(1, 6)] == [250, 500, 1000, None, None]
    assert policy.not_before("failed", 2, ENDED) == ENDED + timedelta(milliseconds=500)
    assert policy.not_before("failed", 4, ENDED) is None


def test_one_attempt_means_no_retry() -> None:
    policy = AutoRetry(max_attempts=1, backoff_ms=0, on=frozenset({"failed", "crashed"}))
    assert policy.delay_ms("failed", 1) is None


@given(
    max_attempts=st.integers(1, MAX_AUTO_RETRY_ATTEMPTS),
    backoff_ms=st.integers(0, MAX_AUTO_RETRY_BACKOFF_MS),
    attempt=st.integers(1, 10_000),
)
def test_retries_are_bounded_in_number_and_in_wait(
    max_attempts: int, backoff_ms: int, attempt: int
) -> None:
    policy = AutoRetry(max_attempts, backoff_ms, frozenset({"failed"}))
    delay = policy.delay_ms("failed", attempt)
    if attempt >= max_attempts:
        assert delay is None
    else:
        assert delay is not None and backoff_ms <= delay <= MAX_AUTO_RETRY_BACKOFF_MS
        following = policy.delay_ms("failed", attempt + 1)
        assert following is None or following >= delay  # never shorter than the one before
    # A chain has at most max_attempts runs: max_attempts - 1 retries.
    retries = sum(policy.delay_ms("failed", n) is not None for n in range(1, attempt + 1))
    assert retries == min(attempt, max_attempts - 1)
