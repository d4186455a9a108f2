"""Firing schedule triggers: decide one trigger's due instants and record them.

One call (``ScheduleFiring.tick``) handles one schedule trigger of one
workflow at one ``now``:

1. It loads the workflow from the log: only an active workflow's triggers
   fire, and they fire the revision current now (the execution records it).
2. It loads the trigger's ``Timetable`` (``domain/timetable.py``) and asks
   ``domain/schedule.py`` which instants are due since the newest one
   decided (or since activation: a pause fires nothing it slept through),
   split by the catch-up policy.
3. Each due instant goes through the overlap policy; one that fires is
   recorded as an execution whose id and idempotency key follow from
   (workflow, node, instant), saved with the timetable's ``Fired`` and its
   queue row (and, where a limit applies, one run taken from the
   organisation's ``executions_per_day``: ``commands/day_limit.py``) in one
   transaction: the keyed-execution machinery of
   ``commands/executions.py``, with the instant as the key. A second
   scheduler (or a restarted one) deciding the same instant fails that
   save (``IntegrityError``) and records nothing.

Bounded: instants older than every policy could still fire are counted as
one ``Missed`` range without being enumerated, and one call decides at most
``max_fires`` instants (the rest are still due at the next tick).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from commands.application import WorkflowApplication
from commands.day_limit import DayLimit, DayRoom
from domain.execution import Execution
from domain.meta import EventMeta
from domain.schedule import MAX_CATCH_UP, Schedule, due_instants
from domain.timetable import Timetable, instant_key, scheduled_execution_id, timetable_id
from domain.triggers import schedule_triggers
from domain.workflow import Workflow
from infrastructure.eventstore import IdempotencyRecord
from infrastructure.queue import enqueue


@dataclass(frozen=True)
class TickResult:
    """What one trigger's tick recorded, and whether an instant waits behind a running one."""

    fired: list[datetime]
    skipped: int = 0
    missed: bool = False
    waiting: bool = False
    more: bool = False
    """Due instants were left for the next tick (``max_fires``)."""


NOTHING = TickResult(fired=[])


class ScheduleFiring:
    def __init__(
        self, app: WorkflowApplication, *, grace: timedelta, executions_per_day: int = 0
    ) -> None:
        self.app = app
        self.grace = grace
        # The organisation's own limit, else this global one (0: none).
        self.day_limit = DayLimit(app, executions_per_day)

    def tick(
        self, workflow_id: UUID, node_id: str, now: datetime, *, max_fires: int = 100
    ) -> TickResult:
        """Decide and record what is due for one trigger at ``now``.

        ``IntegrityError``: another scheduler recorded a decision first;
        nothing of this call was saved, and the next tick decides anew.
        """
        workflow = self._workflow(workflow_id)
        if workflow is None or not workflow.active or workflow.deleted:
            return NOTHING
        schedule = next(
            (t.schedule for t in schedule_triggers(workflow.nodes) if t.node_id == node_id), None
        )
        if schedule is None:
            return NOTHING
        # None only for an activation recorded before workflows kept its time.
        activated_at = getattr(workflow, "activated_at", None) or now
        meta = EventMeta(
            org_id=workflow.org_id,
            actor=f"scheduler:{node_id}",
            correlation_id=f"schedule:{workflow_id}/{node_id}",
        )
        timetable = self._timetable(workflow, node_id, meta)
        missed = self._miss(timetable, schedule, activated_at, now, meta)
        since = timetable.since(activated_at)
        due = due_instants(schedule, last=since, now=now, grace=self.grace)
        running = self._running(timetable.recent)
        fired: list[datetime] = []
        room = self.day_limit.room(workflow.org_id, now)
        # A buffered instant past the day's limit waits (buffered) for room.
        released = (
            timetable.release(running=running, revision=workflow.revision, meta=meta)
            if not room.limited or room.left > 0
            else None
        )
        if released is not None:
            running = [self._record(workflow, timetable, released, node_id, room)]
            room = replace(room, left=room.left - 1)
            fired.append(released)
        skipped = 0
        for instant in due.fire[:max_fires]:
            if (
                room.limited
                and room.left <= 0
                and timetable.would_fire(overlap=schedule.overlap, running=running)
            ):
                timetable.refuse(instant, reason=room.refusal(), meta=meta)
                skipped += 1
                continue
            decision = timetable.take(
                instant,
                overlap=schedule.overlap,
                running=running,
                revision=workflow.revision,
                meta=meta,
            )
            if decision == "fire":
                running.append(self._record(workflow, timetable, instant, node_id, room))
                room = replace(room, left=room.left - 1)
                fired.append(instant)
            elif decision == "skip":
                skipped += 1
        if timetable.pending_events:
            self.app.save(timetable)
        return TickResult(
            fired=fired,
            skipped=skipped,
            missed=missed,
            waiting=timetable.buffered is not None,
            more=len(due.fire) > max_fires,
        )

    def _miss(
        self,
        timetable: Timetable,
        schedule: Schedule,
        activated_at: datetime,
        now: datetime,
        meta: EventMeta,
    ) -> bool:
        """Record the due instants the catch-up policy gives up, as one range.

        They are all older than the ones it fires (see ``due_instants``), so
        ``(since, through]`` names them exactly.
        """
        since = timetable.since(activated_at)
        # No policy fires an instant older than this: walk to it, at most MAX_CATCH_UP steps.
        horizon = now - max(timedelta(seconds=schedule.catch_up_window_s), self.grace)
        through: datetime | None = None
        for count, instant in enumerate(schedule.instants_after(since)):
            if instant >= horizon:
                break
            if count == MAX_CATCH_UP:
                through = horizon - timedelta(seconds=1)  # a bound, not an instant
                break
            through = instant
        due = due_instants(schedule, last=through or since, now=now, grace=self.grace)
        if due.missed:
            through = max(due.missed)
        if through is None:
            return False
        reason = _miss_reason(schedule, self.grace)
        timetable.miss(after=since, through=through, reason=reason, meta=meta)
        return True

    def _record(
        self,
        workflow: Workflow,
        timetable: Timetable,
        instant: datetime,
        node_id: str,
        room: DayRoom,
    ) -> str:
        """Queue the instant's execution, saved with the timetable's decisions so far
        (and taken from the day's limit, where one applies)."""
        key = instant_key(workflow.id, node_id, instant)
        execution_id = scheduled_execution_id(workflow.id, node_id, instant)
        execution = Execution.create(
            execution_id=execution_id,
            workflow_id=workflow.id,
            workflow_version=workflow.version,
            workflow_revision=workflow.revision,
            mode="async",
            input={"scheduled_at": _iso(instant), "node_id": node_id},
            meta=EventMeta(
                org_id=workflow.org_id,
                actor=f"scheduler:{node_id}",
                correlation_id=key,
                idempotency_key=key,
            ),
            trigger="schedule",
        )
        record = IdempotencyRecord(
            org_id=workflow.org_id,
            key=key,
            request_hash=key,
            aggregate_id=execution_id,
            aggregate_version=1,
            status_code=202,
        )
        self.app.save(
            execution,
            timetable,
            idempotency=record,
            side_statements=[
                *enqueue(execution_id, workflow.org_id, workflow.id),
                *([room.take()] if room.limited else []),
            ],
        )
        return str(execution_id)

    def _workflow(self, workflow_id: UUID) -> Workflow | None:
        try:
            workflow: object = self.app.repository.get(workflow_id)
        except AggregateNotFoundError:
            return None
        return workflow if isinstance(workflow, Workflow) else None

    def _timetable(self, workflow: Workflow, node_id: str, meta: EventMeta) -> Timetable:
        try:
            found: object = self.app.repository.get(timetable_id(workflow.id, node_id))
        except AggregateNotFoundError:
            return Timetable.create(workflow_id=workflow.id, node_id=node_id, meta=meta)
        assert isinstance(found, Timetable)
        return found

    def _running(self, execution_ids: Sequence[str]) -> list[str]:
        """Those of ``execution_ids`` not ended yet: their queue rows go with their end."""
        if not execution_ids:
            return []
        with self.app.event_store.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "SELECT execution_id FROM execution_queue WHERE execution_id = ANY(%s::uuid[])",
                (list(execution_ids),),
            )
            queued = {str(row["execution_id"]) for row in curs.fetchall()}
        return [execution_id for execution_id in execution_ids if execution_id in queued]


def _miss_reason(schedule: Schedule, grace: timedelta) -> str:
    seconds = int(grace.total_seconds())
    if schedule.catch_up == "skip_missed":
        return f"catch_up skip_missed: more than {seconds}s late"
    if schedule.catch_up == "run_latest":
        return "catch_up run_latest: only the latest missed instant runs"
    return f"catch_up run_all: older than the catch-up window of {schedule.catch_up_window_s}s"


def _iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")
