"""Schedules: when a schedule trigger fires, and what to do about late or overlapping runs.

Pure: the caller passes the clock (``now``) and what the log says (the last
instant fired, how many of the workflow's scheduled runs are still going).
The scheduler role records each decision as an execution whose idempotency
key is (workflow, instant), so computing the same instant twice, in two
processes or after a crash, can never fire it twice.

- **Cron** expressions have the five classic fields (minute hour day month
  weekday) and are read by ``croniter``, a well-kept parser, on the wall
  clock of an IANA time zone (``zoneinfo``). Daylight saving time: a wall
  time that does not exist (the hour skipped in spring) fires at the same
  distance past the jump (02:30 in a 02:00→03:00 gap fires at 03:30, the
  instant ``zoneinfo`` maps it to); a wall time that happens twice (the hour
  repeated in autumn) fires once, at its first occurrence; an instant two
  wall times map to fires once.
- **Intervals** count seconds of real time from the Unix epoch, so every
  process computes the same instants whatever its time zone or start time.
- **Catch-up** after downtime: ``skip_missed`` fires only instants at most
  ``grace`` late; ``run_latest`` fires the newest missed instant within the
  window; ``run_all`` fires every missed instant within the window (oldest
  first, at most ``MAX_CATCH_UP`` of them).
- **Overlap** while an earlier scheduled run is still going: ``allow_all``
  fires anyway; ``skip`` records the instant as skipped; ``buffer_one``
  keeps one instant waiting and skips the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

OverlapPolicy = Literal["skip", "buffer_one", "allow_all"]
CatchUpPolicy = Literal["skip_missed", "run_latest", "run_all"]

OVERLAP_POLICIES: Final = ("skip", "buffer_one", "allow_all")
CATCH_UP_POLICIES: Final = ("skip_missed", "run_latest", "run_all")
MIN_INTERVAL_S: Final = 1
MAX_INTERVAL_S: Final = 366 * 24 * 3600
MAX_CATCH_UP_WINDOW_S: Final = 31 * 24 * 3600
# A catch-up never fires more than this many instants at once.
MAX_CATCH_UP: Final = 1000
# How late an instant may be and still count as on time.
DEFAULT_GRACE: Final = timedelta(seconds=60)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class ScheduleInvalid(ValueError):
    """A schedule's parameters cannot be used; the message says which and why."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Schedule:
    """A validated schedule: exactly one of ``cron`` and ``interval_s``."""

    cron: str | None = None
    interval_s: int | None = None
    timezone: str = "UTC"
    overlap: OverlapPolicy = "skip"
    catch_up: CatchUpPolicy = "skip_missed"
    catch_up_window_s: int = 3600
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.interval_s is None):
            raise ScheduleInvalid("cron", "give exactly one of cron and interval_s")
        if self.cron is not None:
            _check_cron(self.cron)
        if self.interval_s is not None and (
            isinstance(self.interval_s, bool)
            or not isinstance(self.interval_s, int)
            or not MIN_INTERVAL_S <= self.interval_s <= MAX_INTERVAL_S
        ):
            raise ScheduleInvalid(
                "interval_s",
                f"must be a whole number of seconds, {MIN_INTERVAL_S}-{MAX_INTERVAL_S}",
            )
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ScheduleInvalid("timezone", f"unknown IANA time zone {self.timezone!r}") from None
        object.__setattr__(self, "_zone", zone)
        if self.overlap not in OVERLAP_POLICIES:
            raise ScheduleInvalid("overlap", f"must be one of {', '.join(OVERLAP_POLICIES)}")
        if self.catch_up not in CATCH_UP_POLICIES:
            raise ScheduleInvalid("catch_up", f"must be one of {', '.join(CATCH_UP_POLICIES)}")
        if (
            isinstance(self.catch_up_window_s, bool)
            or not isinstance(self.catch_up_window_s, int)
            or not 0 <= self.catch_up_window_s <= MAX_CATCH_UP_WINDOW_S
        ):
            raise ScheduleInvalid(
                "catch_up_window_s", f"must be a whole number of seconds, 0-{MAX_CATCH_UP_WINDOW_S}"
            )

    def instants_after(self, after: datetime) -> Iterator[datetime]:
        """Every firing instant strictly after ``after``, in order, as aware UTC datetimes."""
        _require_aware(after)
        if self.interval_s is not None:
            yield from _interval_instants(self.interval_s, after)
        else:
            assert self.cron is not None
            yield from _cron_instants(self.cron, self._zone, after)

    def next_after(self, after: datetime) -> datetime:
        return next(self.instants_after(after))


@dataclass(frozen=True)
class Due:
    """What a tick decided: the instants to fire now and the ones it gave up, with why."""

    fire: list[datetime]
    missed: list[datetime]

    @property
    def latest(self) -> datetime | None:
        candidates = self.fire + self.missed
        return max(candidates) if candidates else None


def due_instants(
    schedule: Schedule,
    *,
    last: datetime,
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
) -> Due:
    """Instants in ``(last, now]`` split by the catch-up policy.

    ``last`` is the newest instant already decided (fired or skipped), or the
    activation time for a schedule that never fired: instants before it are
    never fired.
    """
    _require_aware(last, now)
    due: list[datetime] = []
    missed_count = 0
    for instant in schedule.instants_after(last):
        if instant > now:
            break
        due.append(instant)
        if len(due) > MAX_CATCH_UP:
            # Keep the newest MAX_CATCH_UP; count the rest as missed without holding them.
            due.pop(0)
            missed_count += 1
    if not due:
        return Due(fire=[], missed=[])
    on_time = [instant for instant in due if now - instant <= grace]
    late = [instant for instant in due if now - instant > grace]
    window_start = now - timedelta(seconds=schedule.catch_up_window_s)
    if schedule.catch_up == "skip_missed" or not late:
        fire = on_time
    elif schedule.catch_up == "run_latest":
        # The newest due instant stands for everything missed before it.
        fire = on_time or ([late[-1]] if late[-1] >= window_start else [])
    else:  # run_all
        fire = [instant for instant in late if instant >= window_start] + on_time
    fired = set(fire)
    return Due(fire=fire, missed=[instant for instant in due if instant not in fired])


OverlapDecision = Literal["fire", "buffer", "skip"]


def decide_overlap(policy: OverlapPolicy, *, running: int, buffered: int) -> OverlapDecision:
    """Whether a due instant fires now, waits behind the running one, or is skipped.

    ``running`` counts the workflow's scheduled runs not yet ended; ``buffered``
    the instants already waiting behind them.
    """
    if running == 0 or policy == "allow_all":
        return "fire"
    if policy == "buffer_one" and buffered == 0:
        return "buffer"
    return "skip"


def _check_cron(expression: object) -> None:
    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise ScheduleInvalid(
            "cron", "must have five fields: minute hour day-of-month month day-of-week"
        )
    try:
        croniter(expression, datetime(2000, 1, 1)).get_next(datetime)
    except (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError) as exc:
        raise ScheduleInvalid("cron", f"cannot be read: {exc}") from None


def _interval_instants(interval_s: int, after: datetime) -> Iterator[datetime]:
    elapsed = (after - _EPOCH) // timedelta(seconds=1)
    count = elapsed // interval_s + 1
    while True:
        yield _EPOCH + timedelta(seconds=count * interval_s)
        count += 1


def _cron_instants(expression: str, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    # croniter walks naive wall-clock times; zoneinfo maps each to its instant
    # (fold=0: the first occurrence of a repeated time; a skipped time lands
    # past the gap). Start an hour early so a gap's shifted instants are seen.
    wall = after.astimezone(zone).replace(tzinfo=None) - timedelta(hours=1)
    times = croniter(expression, wall)
    previous = after
    while True:
        local = times.get_next(datetime)
        instant = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if instant > previous:
            previous = instant
            yield instant


def _require_aware(*moments: datetime) -> None:
    for moment in moments:
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("schedule times must be timezone-aware")
