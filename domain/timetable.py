"""The Timetable aggregate: what the scheduler decided for one schedule trigger, instant by instant.

One timetable per (workflow, schedule trigger node). Its events are the
record of every decision: ``Fired`` (with the execution it queued),
``Skipped`` and ``Buffered`` (the overlap policy, with why), ``Missed``
(the catch-up policy after downtime, with why). So "why did 09:00 not run?"
has an answer in the log, queryable like any event (``/v1/audit/events``).

Exactly once: the instant's execution id follows from (workflow, node,
instant) (``scheduled_execution_id``) and is saved in the same transaction
as the timetable's ``Fired``. Two schedulers deciding the same instant, or
one deciding again after a crash, collide on that id and on the
timetable's next version: only one is ever recorded. A crash before the
save records nothing, and the restarted scheduler finds the instant still
due (``last`` did not move) and applies the catch-up policy to it.

The state is what the next decision needs: the newest instant decided
(``last``), an instant waiting behind a running one (``buffered``), and
the executions fired lately (``recent``: the overlap check asks which of
them are still going).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.meta import EventMeta
from domain.schedule import OverlapDecision, OverlapPolicy, decide_overlap

_TIMETABLE_NAMESPACE: Final = uuid.UUID("5d0f6c39-8f57-4d3e-a1c4-2b7e9f30c812")
_EXECUTION_NAMESPACE: Final = uuid.UUID("c3a1e6f2-4b8d-4e0a-9f17-6d2c5b8a9e03")
# Executions fired lately whose end the overlap check looks for: more than
# one runs at a time only under ``allow_all``, which does not look.
RECENT_FIRED: Final = 16


def timetable_id(workflow_id: UUID, node_id: str) -> UUID:
    return uuid.uuid5(_TIMETABLE_NAMESPACE, f"{workflow_id}/{node_id}")


def instant_key(workflow_id: UUID, node_id: str, instant: datetime) -> str:
    """The idempotency key of one scheduled instant: (workflow, node, instant in UTC)."""
    return f"schedule:{workflow_id}/{node_id}/{_iso(instant)}"


def scheduled_execution_id(workflow_id: UUID, node_id: str, instant: datetime) -> UUID:
    """The id of the execution an instant fires: the same in every process, every time."""
    return uuid.uuid5(_EXECUTION_NAMESPACE, instant_key(workflow_id, node_id, instant))


class Timetable(Aggregate):
    """The decisions taken for one schedule trigger; public methods decide, events apply."""

    @classmethod
    def create(cls, *, workflow_id: UUID, node_id: str, meta: EventMeta) -> Timetable:
        return cls(
            id=timetable_id(workflow_id, node_id),
            workflow_id=workflow_id,
            node_id=node_id,
            meta=meta.as_dict(),
        )

    @event("Created")
    def __init__(self, *, id: UUID, workflow_id: UUID, node_id: str, meta: dict[str, Any]) -> None:
        self.org_id: str = meta["org_id"]
        self.workflow_id = workflow_id
        self.node_id = node_id
        self.last: datetime | None = None
        self.buffered: datetime | None = None
        self.recent: list[str] = []

    def since(self, activated_at: datetime) -> datetime:
        """Where the next due instants start: after the newest decided, never before activation."""
        return activated_at if self.last is None else max(self.last, activated_at)

    def take(
        self,
        instant: datetime,
        *,
        overlap: OverlapPolicy,
        running: list[str],
        revision: int,
        meta: EventMeta,
    ) -> OverlapDecision:
        """Decide one due instant by the overlap policy, and record the decision.

        ``running``: the ids among ``recent`` whose runs have not ended. On
        ``fire`` the caller queues ``scheduled_execution_id(...)`` in the
        same save.
        """
        self._check_next(instant)
        decision = self._decision(overlap, running)
        if decision == "fire":
            self._fire(instant, revision, meta, buffered=False)
        elif decision == "buffer":
            self._buffered(
                **self._about(), instant=_iso(instant), running=running, meta=meta.as_dict()
            )
        else:
            reason = f"overlap {overlap}: execution {running[0]} is still running" + (
                "" if self.buffered is None else f" and {_iso(self.buffered)} waits behind it"
            )
            about = self._about()
            self._skipped(**about, instant=_iso(instant), reason=reason, meta=meta.as_dict())
        return decision

    def would_fire(self, *, overlap: OverlapPolicy, running: list[str]) -> bool:
        """Whether ``take`` would fire the next due instant now (nothing recorded)."""
        return self._decision(overlap, running) == "fire"

    def refuse(self, instant: datetime, *, reason: str, meta: EventMeta) -> None:
        """Record a due instant as skipped for a reason outside the overlap policy (a limit)."""
        self._check_next(instant)
        self._skipped(**self._about(), instant=_iso(instant), reason=reason, meta=meta.as_dict())

    def _check_next(self, instant: datetime) -> None:
        _iso(instant)  # aware, or ValueError
        if self.last is not None and instant <= self.last:
            raise ValueError(f"{_iso(instant)} is not after the last decided {_iso(self.last)}")

    def _decision(self, overlap: OverlapPolicy, running: list[str]) -> OverlapDecision:
        return decide_overlap(
            overlap, running=len(running), buffered=0 if self.buffered is None else 1
        )

    def release(self, *, running: list[str], revision: int, meta: EventMeta) -> datetime | None:
        """Fire the buffered instant once nothing runs; that instant, if so."""
        instant = self.buffered
        if instant is None or running:
            return None
        self._fire(instant, revision, meta, buffered=True)
        return instant

    def miss(self, *, after: datetime, through: datetime, reason: str, meta: EventMeta) -> None:
        """Every instant in ``(after, through]`` was not fired: the catch-up policy said so."""
        if through <= after:
            raise ValueError("a missed range ends after it starts")
        if self.last is not None and through <= self.last:
            raise ValueError(f"{_iso(through)} is not after the last decided {_iso(self.last)}")
        self._missed(
            **self._about(),
            after=_iso(after),
            through=_iso(through),
            reason=reason,
            meta=meta.as_dict(),
        )

    def _fire(self, instant: datetime, revision: int, meta: EventMeta, *, buffered: bool) -> None:
        execution_id = scheduled_execution_id(self.workflow_id, self.node_id, instant)
        self._fired(
            **self._about(),
            instant=_iso(instant),
            execution_id=str(execution_id),
            revision=revision,
            buffered=buffered,
            meta=meta.as_dict(),
        )

    def _about(self) -> dict[str, str]:
        # Each decision names its workflow and node, so the log reads without a look-up.
        return {"workflow_id": str(self.workflow_id), "node_id": self.node_id}

    @event("Fired")
    def _fired(
        self,
        workflow_id: str,
        node_id: str,
        instant: str,
        execution_id: str,
        revision: int,
        buffered: bool,
        meta: dict[str, Any],
    ) -> None:
        if buffered:
            self.buffered = None
        else:
            self.last = _parse(instant)
        self.recent = [*self.recent, execution_id][-RECENT_FIRED:]

    @event("Buffered")
    def _buffered(
        self, workflow_id: str, node_id: str, instant: str, running: list[str], meta: dict[str, Any]
    ) -> None:
        self.last = self.buffered = _parse(instant)

    @event("Skipped")
    def _skipped(
        self, workflow_id: str, node_id: str, instant: str, reason: str, meta: dict[str, Any]
    ) -> None:
        self.last = _parse(instant)

    @event("Missed")
    def _missed(
        self,
        workflow_id: str,
        node_id: str,
        after: str,
        through: str,
        reason: str,
        meta: dict[str, Any],
    ) -> None:
        self.last = _parse(through)


def _iso(instant: datetime) -> str:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError("scheduled instants must be timezone-aware")
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


TimetableCreatedEvent: Any = Timetable.Created  # type: ignore[attr-defined]
TimetableFiredEvent: Any = Timetable.Fired  # type: ignore[attr-defined]
TimetableBufferedEvent: Any = Timetable.Buffered  # type: ignore[attr-defined]
TimetableSkippedEvent: Any = Timetable.Skipped  # type: ignore[attr-defined]
TimetableMissedEvent: Any = Timetable.Missed  # type: ignore[attr-defined]
