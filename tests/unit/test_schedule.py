"""Schedules (domain/schedule.py): cron and interval instants across DST, catch-up and overlap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.schedule import (
    MAX_CATCH_UP,
    Schedule,
    ScheduleInvalid,
    decide_overlap,
    due_instants,
)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def take(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    return list(islice(schedule.instants_after(after), count))


def test_interval_instants_are_epoch_aligned_and_strictly_after() -> None:
    every_15 = Schedule(interval_s=15)
    assert take(every_15, utc(2026, 1, 1, 0, 0, 7), 3) == [
        utc(2026, 1, 1, 0, 0, 15),
        utc(2026, 1, 1, 0, 0, 30),
        utc(2026, 1, 1, 0, 0, 45),
    ]
    # Exactly on an instant: the next one, never the same again.
    assert every_15.next_after(utc(2026, 1, 1, 0, 0, 15)) == utc(2026, 1, 1, 0, 0, 30)


def test_interval_ignores_the_time_zone_and_dst() -> None:
    hourly = Schedule(interval_s=3600, timezone="Europe/Berlin")
    instants = take(hourly, utc(2026, 3, 29, 0, 0), 3)
    assert [b - a for a, b in pairwise(instants)] == [timedelta(hours=1)] * 2


def test_cron_runs_on_the_zones_wall_clock() -> None:
    nine_am = Schedule(cron="0 9 * * *", timezone="America/New_York")
    # 09:00 EST is 14:00 UTC in winter, 09:00 EDT is 13:00 UTC in summer.
    assert nine_am.next_after(utc(2026, 1, 10)) == utc(2026, 1, 10, 14)
    assert nine_am.next_after(utc(2026, 7, 10)) == utc(2026, 7, 10, 13)


def test_spring_forward_a_skipped_wall_time_fires_past_the_gap_once() -> None:
    # Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    daily = Schedule(cron="30 2 * * *", timezone="Europe/Berlin")
    assert daily.next_after(utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1, 30)  # 03:30 CEST
    hourly = Schedule(cron="30 * * * *", timezone="Europe/Berlin")
    instants = take(hourly, utc(2026, 3, 28, 23, 0), 4)
    # 00:30, 01:30 CET, then 02:30 (skipped) and 03:30 CEST are one instant: fired once.
    assert instants == [
        utc(2026, 3, 28, 23, 30),
        utc(2026, 3, 29, 0, 30),
        utc(2026, 3, 29, 1, 30),
        utc(2026, 3, 29, 2, 30),
    ]


def test_fall_back_a_repeated_wall_time_fires_once() -> None:
    # Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC); 02:30 happens twice.
    daily = Schedule(cron="30 2 * * *", timezone="Europe/Berlin")
    day = take(daily, utc(2026, 10, 24, 12), 2)
    assert day == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    hourly = Schedule(cron="30 * * * *", timezone="Europe/Berlin")
    instants = take(hourly, utc(2026, 10, 24, 23, 0), 4)
    assert instants == [
        utc(2026, 10, 24, 23, 30),  # 01:30 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST (first occurrence)
        utc(2026, 10, 25, 2, 30),  # 03:30 CET
        utc(2026, 10, 25, 3, 30),
    ]


@given(
    st.sampled_from(["*/7 * * * *", "30 2 * * *", "0 */3 * * 1-5", "15 1,2,3 * * *"]),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
)
def test_cron_instants_strictly_increase_and_match_the_wall_clock(
    cron: str, zone: str, start: datetime
) -> None:
    schedule = Schedule(cron=cron, timezone=zone)
    after = start.replace(tzinfo=UTC)
    instants = take(schedule, after, 30)
    assert instants[0] > after
    assert all(a < b for a, b in pairwise(instants))
    minute_field = cron.split()[0]
    for instant in instants:
        local = instant.astimezone(schedule._zone)
        if minute_field.isdigit() and zone != "Australia/Lord_Howe":
            # Past a one-hour gap the minute is kept (Lord Howe's gap is 30 minutes).
            assert local.minute == int(minute_field)


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({}, "cron"),
        ({"cron": "* * * * *", "interval_s": 5}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "* * * * * *"}, "cron"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": True}, "interval_s"),
        ({"interval_s": 1.5}, "interval_s"),
        ({"interval_s": 5, "timezone": "Mars/Olympus"}, "timezone"),
        ({"interval_s": 5, "timezone": "../etc/passwd"}, "timezone"),
        ({"interval_s": 5, "overlap": "queue"}, "overlap"),
        ({"interval_s": 5, "catch_up": "all"}, "catch_up"),
        ({"interval_s": 5, "catch_up_window_s": -1}, "catch_up_window_s"),
    ],
)
def test_invalid_schedules_name_the_field(parameters: dict[str, object], field: str) -> None:
    with pytest.raises(ScheduleInvalid) as raised:
        Schedule(**parameters)  # type: ignore[arg-type]
    assert raised.value.field == field


def test_on_time_ticks_fire_each_instant() -> None:
    every_second = Schedule(interval_s=1)
    due = due_instants(every_second, last=utc(2026, 1, 1, 0, 0, 0), now=utc(2026, 1, 1, 0, 0, 3))
    assert due.fire == [utc(2026, 1, 1, 0, 0, s) for s in (1, 2, 3)]
    assert due.missed == []
    assert due_instants(every_second, last=utc(2026, 1, 1), now=utc(2026, 1, 1)).fire == []


def test_catch_up_policies_after_downtime() -> None:
    last = utc(2026, 1, 1, 0, 0)
    now = utc(2026, 1, 1, 5, 0, 10)  # down five hours; the 05:00 instant is on time
    hourly = dict(interval_s=3600, catch_up_window_s=3 * 3600)

    skip = due_instants(Schedule(**hourly, catch_up="skip_missed"), last=last, now=now)
    assert skip.fire == [utc(2026, 1, 1, 5)]
    assert skip.missed == [utc(2026, 1, 1, h) for h in (1, 2, 3, 4)]

    latest = due_instants(Schedule(**hourly, catch_up="run_latest"), last=last, now=now)
    assert latest.fire == [utc(2026, 1, 1, 5)]

    every = due_instants(Schedule(**hourly, catch_up="run_all"), last=last, now=now)
    # The window reaches back three hours: 02:10 onwards.
    assert every.fire == [utc(2026, 1, 1, h) for h in (3, 4, 5)]
    assert every.missed == [utc(2026, 1, 1, h) for h in (1, 2)]
    assert every.latest == utc(2026, 1, 1, 5)


def test_run_latest_fires_the_newest_late_instant_within_the_window() -> None:
    hourly = Schedule(interval_s=3600, catch_up="run_latest", catch_up_window_s=3600)
    late = due_instants(hourly, last=utc(2026, 1, 1), now=utc(2026, 1, 1, 4, 30))
    assert late.fire == [utc(2026, 1, 1, 4)]
    assert late.missed == [utc(2026, 1, 1, h) for h in (1, 2, 3)]
    too_late = due_instants(
        Schedule(interval_s=3600, catch_up="run_latest", catch_up_window_s=600),
        last=utc(2026, 1, 1),
        now=utc(2026, 1, 1, 4, 30),
    )
    assert too_late.fire == []
    assert too_late.latest == utc(2026, 1, 1, 4)


def test_catch_up_is_bounded() -> None:
    every_second = Schedule(interval_s=1, catch_up="run_all", catch_up_window_s=10**6)
    due = due_instants(every_second, last=utc(2026, 1, 1), now=utc(2026, 1, 2))
    assert len(due.fire) == MAX_CATCH_UP
    assert due.fire[-1] == utc(2026, 1, 2)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        Schedule(interval_s=5).next_after(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("policy", "running", "buffered", "decision"),
    [
        ("skip", 0, 0, "fire"),
        ("skip", 1, 0, "skip"),
        ("buffer_one", 1, 0, "buffer"),
        ("buffer_one", 1, 1, "skip"),
        ("allow_all", 3, 0, "fire"),
    ],
)
def test_overlap(policy: str, running: int, buffered: int, decision: str) -> None:
    assert decide_overlap(policy, running=running, buffered=buffered) == decision  # type: ignore[arg-type]
