"""Retention's pure rules: windows by UTC day, and what pins and expiry allow."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import ExecutionExpired, ExecutionNotFinished
from domain.execution import Execution
from domain.meta import EventMeta
from domain.retention import (
    day_scope,
    effective_days,
    first_kept_day,
    parse_day_scope,
    window_start,
)

META = EventMeta(org_id="org-1", actor="apikey:t", correlation_id="c")


def execution(outcome: str = "succeeded") -> Execution:
    run = Execution.create(
        execution_id=uuid.uuid4(),
        workflow_id=uuid.uuid4(),
        workflow_version=1,
        workflow_revision=1,
        mode="async",
        input={"n": 1},
        meta=META,
    )
    if outcome != "queued":
        run.start(worker_id="w", meta=META)
    if outcome == "succeeded":
        run.succeed(output={}, output_truncated=False, meta=META)
    elif outcome == "failed":
        run.fail(error="x", meta=META)
    return run


def test_a_window_counts_whole_utc_days() -> None:
    # 10 days at 1990-03-11 23:59 UTC: 1990-03-01 is the oldest day kept.
    now = datetime(1990, 3, 11, 23, 59, tzinfo=UTC)
    assert first_kept_day(now, 10) == date(1990, 3, 1)
    assert window_start(now, 10) == datetime(1990, 3, 1, tzinfo=UTC)
    # The same instant seen from another offset is the same UTC day.
    elsewhere = now.astimezone(timezone(timedelta(hours=5)))
    assert first_kept_day(elsewhere, 10) == date(1990, 3, 1)


def test_windows_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="at least 1 day"):
        first_kept_day(datetime(1990, 1, 1, tzinfo=UTC), 0)
    with pytest.raises(ValueError, match="aware"):
        first_kept_day(datetime(1990, 1, 1), 3)


def test_a_workflows_setting_wins_and_zero_keeps_for_ever() -> None:
    assert effective_days(30, None) == 30
    assert effective_days(30, 2) == 2
    assert effective_days(30, 0) == 0
    assert effective_days(0, 7) == 7


@given(day=st.dates(), workflow=st.uuids())
def test_day_scopes_round_trip(day: date, workflow: uuid.UUID) -> None:
    assert parse_day_scope(day_scope(day, workflow)) == (day, str(workflow))


def test_other_scopes_are_not_day_scopes() -> None:
    assert parse_day_scope("") is None
    assert parse_day_scope("2026-01-01") is None
    assert parse_day_scope("2026-13-01/" + str(uuid.uuid4())) is None


def test_only_a_finished_execution_is_pinned_and_pinning_twice_records_once() -> None:
    with pytest.raises(ExecutionNotFinished, match="only a finished execution"):
        execution("queued").pin(payload=None, key_scope=None, meta=META)
    with pytest.raises(ExecutionNotFinished):
        execution("running").pin(payload=None, key_scope=None, meta=META)
    run = execution()
    assert run.pin(payload=None, key_scope=None, meta=META)
    assert not run.pin(payload=None, key_scope=None, meta=META)
    assert [type(e).__name__ for e in run.collect_events()][-1:] == ["Pinned"]
    assert run.unpin(meta=META)
    assert not run.unpin(meta=META)


def test_pin_scopes_are_new_for_every_pin() -> None:
    run = execution()
    first = run.next_pin_scope
    run.pin(payload={"$sealed": {}}, key_scope=first, meta=META)
    assert (run.pin_scope, run.pin_payload) == (first, {"$sealed": {}})
    run.unpin(meta=META)
    assert run.pin_scope is None and run.pin_payload is None
    assert run.next_pin_scope != first


def test_retention_takes_finished_unpinned_executions_once() -> None:
    assert not execution("queued").expirable
    assert not execution("running").expirable
    pinned = execution()
    pinned.pin(payload=None, key_scope=None, meta=META)
    assert not pinned.expirable
    with pytest.raises(ValueError, match="may not expire"):
        pinned.expire(as_of="1990-03-01", retention_days=3, meta=META)
    run = execution("failed")
    assert run.expirable
    run.expire(as_of="1990-03-01", retention_days=3, meta=META)
    assert run.expired and not run.expirable
    with pytest.raises(ValueError, match="may not expire"):
        run.expire(as_of="1990-03-01", retention_days=3, meta=META)


def test_an_expired_execution_is_neither_pinned_nor_retried() -> None:
    run = execution("failed")
    run.expire(as_of="1990-03-01", retention_days=3, meta=META)
    with pytest.raises(ExecutionExpired, match="retention pruned it"):
        run.pin(payload=None, key_scope=None, meta=META)
    with pytest.raises(ExecutionExpired):
        run.unpin(meta=META)
    with pytest.raises(ExecutionExpired):
        run.ensure_retryable()


@given(day=st.dates(), workflow=st.uuids())
def test_retention_names_the_day_keys_as_sealing_makes_them(day: date, workflow: uuid.UUID) -> None:
    from commands.payloads import day_scope as sealing_day_scope

    assert day_scope(day, workflow) == sealing_day_scope(day, workflow)
