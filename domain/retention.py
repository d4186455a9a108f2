"""Retention: how long an execution's payload and document are kept.

The unit is the UTC day, because payloads are sealed under one key per
workflow and UTC day (scope ``YYYY-MM-DD/<workflow id>``): with a window of
``N`` days, at ``now`` the days before ``today - N`` are past it. Their day
keys are destroyed (every payload sealed under them reads as erased) and the
finished, unpinned executions queued on them expire (``Execution.expire``),
which prunes their documents from the views. ``N = 0`` keeps for ever.

A workflow's own ``settings.retention_days`` wins over the global
``REPORUNNER_EXECUTION_RETENTION_DAYS`` (0 there too means for ever).

``RetentionRecord`` is the audit trail of the keys retention destroyed: one
event per batch, naming day-key scopes and key ids (no personal data).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.meta import EventMeta

__all__ = [
    "RetentionRecord",
    "day_scope",
    "effective_days",
    "first_kept_day",
    "parse_day_scope",
    "window_start",
]


def effective_days(global_days: int, workflow_days: int | None) -> int:
    """The window that applies to a workflow: its own setting, else the global one; 0 = for ever."""
    return global_days if workflow_days is None else workflow_days


def first_kept_day(now: datetime, days: int) -> date:
    """The oldest UTC day still inside a window of ``days`` (>= 1) at ``now``."""
    if days < 1:
        raise ValueError(f"a window is at least 1 day, got {days}")
    if now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    return now.astimezone(UTC).date() - timedelta(days=days)


def window_start(now: datetime, days: int) -> datetime:
    """The instant before which an execution's queued time is past the window."""
    return datetime.combine(first_kept_day(now, days), time(), tzinfo=UTC)


def day_scope(day: date, workflow_id: UUID | str) -> str:
    """The scope of a workflow's day key (``Keyring.key_for(org, DAY, scope)``)."""
    return f"{day.isoformat()}/{workflow_id}"


def parse_day_scope(scope: str) -> tuple[date, str] | None:
    """(day, workflow id) of a day key's scope; None for a scope of another shape."""
    day, _, workflow_id = scope.partition("/")
    try:
        return date.fromisoformat(day), str(UUID(workflow_id))
    except ValueError:
        return None


class RetentionRecord(Aggregate):
    """What one retention batch did to keys, for the audit trail."""

    @event("DayKeysDestroyed")
    def __init__(
        self,
        *,
        as_of: str,
        day_keys: list[dict[str, str]],
        meta: dict[str, Any],
    ) -> None:
        """``as_of``: the run's instant (ISO); ``day_keys``: ``{scope, key_id}`` each."""
        self.org_id: str = meta["org_id"]
        self.as_of = as_of
        self.day_keys = day_keys

    @classmethod
    def day_keys_destroyed(
        cls, *, as_of: datetime, day_keys: list[tuple[str, str]], meta: EventMeta
    ) -> RetentionRecord:
        if not day_keys:
            raise ValueError("a record names at least one destroyed key")
        return cls(
            as_of=as_of.astimezone(UTC).isoformat(),
            day_keys=[{"scope": scope, "key_id": key_id} for scope, key_id in day_keys],
            meta=meta.as_dict(),
        )


RetentionDayKeysDestroyedEvent: Any = RetentionRecord.DayKeysDestroyed  # type: ignore[attr-defined]
