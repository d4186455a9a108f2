"""The Organisation aggregate: a tenant, its standing and its limits.

An organisation began as a string on API keys; it keeps that id (``org_id``)
and its aggregate id follows from it (``organisation_id``), so the first
command about an organisation that has no aggregate yet creates it, and two
racing first commands collide on the same id instead of making two.

Public methods decide (and return False when there is nothing to record);
the ``@event`` methods only apply, so a replay never re-runs today's rules.
"""

from __future__ import annotations

import uuid
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.meta import EventMeta

_ORGANISATION_NAMESPACE: Final = uuid.UUID("0b7f3c1e-5a92-4d6e-8c3b-91f4e2a7d518")

ACTIVE: Final = "active"
SUSPENDED: Final = "suspended"

# Every limit an organisation may set; a missing or null one means the global setting.
LIMIT_NAMES: Final = (
    "write_per_s",
    "write_burst",
    "read_per_s",
    "read_burst",
    "sync_runs",
    "max_workflows",
    "executions_per_day",
)


def organisation_id(org_id: str) -> UUID:
    """The aggregate id of organisation ``org_id``: the same in every process."""
    return uuid.uuid5(_ORGANISATION_NAMESPACE, org_id)


def clean_limits(limits: dict[str, Any]) -> dict[str, Any]:
    """Only the limits that are set (known names, not null), in a stable order."""
    unknown = sorted(set(limits) - set(LIMIT_NAMES))
    if unknown:
        raise ValueError(f"unknown limits {unknown}; known: {list(LIMIT_NAMES)}")
    return {name: limits[name] for name in LIMIT_NAMES if limits.get(name) is not None}


class Organisation(Aggregate):
    """One tenant. Its events are the record of who changed its standing and limits."""

    @classmethod
    def create(
        cls, *, org_id: str, name: str, limits: dict[str, Any], meta: EventMeta
    ) -> Organisation:
        return cls(
            id=organisation_id(org_id),
            org_id=org_id,
            name=name or org_id,
            limits=clean_limits(limits),
            meta=meta.as_dict(),
        )

    @event("Created")
    def __init__(
        self, *, id: UUID, org_id: str, name: str, limits: dict[str, Any], meta: dict[str, Any]
    ) -> None:
        self.org_id = org_id
        self.name = name
        self.limits: dict[str, Any] = dict(limits)
        self.status = ACTIVE
        self.suspended_reason: str | None = None

    @property
    def suspended(self) -> bool:
        return self.status == SUSPENDED

    def rename(self, name: str, meta: EventMeta) -> bool:
        if name == self.name:
            return False
        self._renamed(name=name, meta=meta.as_dict())
        return True

    @event("Renamed")
    def _renamed(self, *, name: str, meta: dict[str, Any]) -> None:
        self.name = name

    def suspend(self, reason: str, meta: EventMeta) -> bool:
        if self.suspended:
            return False
        self._suspended(reason=reason, meta=meta.as_dict())
        return True

    @event("Suspended")
    def _suspended(self, *, reason: str, meta: dict[str, Any]) -> None:
        self.status = SUSPENDED
        self.suspended_reason = reason

    def reinstate(self, meta: EventMeta) -> bool:
        if not self.suspended:
            return False
        self._reinstated(meta=meta.as_dict())
        return True

    @event("Reinstated")
    def _reinstated(self, *, meta: dict[str, Any]) -> None:
        self.status = ACTIVE
        self.suspended_reason = None

    def change_limits(self, limits: dict[str, Any], meta: EventMeta) -> bool:
        """Replace the limits (those left out fall back to the global settings)."""
        cleaned = clean_limits(limits)
        if cleaned == self.limits:
            return False
        self._limits_changed(limits=cleaned, meta=meta.as_dict())
        return True

    @event("LimitsChanged")
    def _limits_changed(self, *, limits: dict[str, Any], meta: dict[str, Any]) -> None:
        self.limits = dict(limits)
