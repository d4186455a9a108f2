"""Automatic retries (a workflow's ``settings.retry``), recorded from the log.

A process manager like the workflow-runs recorder: it follows the log, and
for every execution that ended ``Failed`` or ``Crashed`` whose workflow asks
for it (``domain/auto_retry.py``: which statuses, how many attempts, what
back-off) records its retry: a new execution, queued (async), ``retry_of``
the one that ended, one ``attempt`` more, with ``not_before`` its end plus
the back-off.

Decisions:

- The back-off never holds up the follower: the retry is recorded at once
  and its queue row tells workers not to take it before ``not_before``
  (``infrastructure/queue.py``). A follower that slept would delay every
  other failure behind it, and a restart would lose the sleep anyway.
- A retry runs the revision that failed (``original``) and starts from the
  failed node: what a user expects of "try again" after a flaky call; the
  nodes that succeeded made their side effects and are not repeated. When a
  needed output was recorded truncated it starts from the start (logged),
  as a manual retry would have to. An edit of the workflow does not change
  a chain under way: the settings read are those of the revision that ran.
  Cancel the queued retry to stop a chain (canceled runs are never retried).
- A deleted workflow's executions are not retried.
- A retry is a run: it takes from its organisation's ``executions_per_day``
  in the transaction that queues it (``commands/day_limit.py``). Past the
  limit, or for a suspended organisation, it is not queued, and the log
  says so.

Exactly once, also across restarts and with several processes: the retry's
id is derived from the ended execution's id, so there is only ever one
candidate; the batch's retries, their queue rows and the move of the
tracking position commit in one transaction, which succeeds only from the
position the batch was read at (``expect_row``). A batch read again (a
tracking row moved back, a dead letter retried) finds its retries recorded
and records nothing new; two instances racing on one retry collide on its
id and one of them records it.

Like every follower (``projections/follower.py``) it retries a batch that
fails and dead-letters an ending it cannot handle, then goes on.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import replace
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
import structlog
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError
from eventsourcing.utils import get_topic

from commands.day_limit import DayLimit, DayRoom
from commands.executions import ExecutionCommands
from commands.log_follower import LogCommandFollower
from domain.auto_retry import AutoRetry
from domain.errors import (
    DataSubjectErased,
    ExecutionPayloadErased,
    RetryFromFailedNodeImpossible,
    WorkflowDeleted,
)
from domain.execution import (
    Execution,
    ExecutionCrashedEvent,
    ExecutionFailedEvent,
    ExecutionQueuedEvent,
)
from domain.meta import EventMeta
from domain.workflow import Workflow
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE, SideStatement, decode_event
from infrastructure.queue import enqueue
from projections.dead_letters import DeadLetter, describe
from projections.follower import FollowerLoop

log = structlog.get_logger("reporunner.auto_retries")

NAME = "auto-retries"
ACTOR = "auto-retry"
"""Who the retries' events name (``created_by`` of an automatic retry)."""
_RETRY_NAMESPACE = uuid.UUID("5d3c2b8e-51a4-4f0e-9a57-2f7c1d6e0b93")
_POLICY_CACHE = 1024


def retry_id(execution_id: UUID) -> UUID:
    """The id of the automatic retry of ``execution_id``: one per ended execution."""
    return uuid.uuid5(_RETRY_NAMESPACE, str(execution_id))


class AutoRetrier(LogCommandFollower):
    """A follower of the log: its loop, retries and dead letters; here one batch."""

    name = NAME
    lock_key = f"projection:{NAME}"
    transient = (psycopg.OperationalError, OperationalError, InterfaceError)
    # Only the topic: the state of an ending is read only if it may be retried.
    columns = "notification_id, originator_id, topic"

    def __init__(
        self,
        executions: ExecutionCommands,
        batch_size: int = 500,
        *,
        target: PgTarget | None = None,
        executions_per_day: int = 0,
    ) -> None:
        super().__init__(executions.app, batch_size, target)
        self.executions = executions
        # Retries count as runs: the organisation's own limit, else this one (0: none).
        self.day_limit = DayLimit(executions.app, executions_per_day)
        self._topics = {get_topic(ExecutionFailedEvent), get_topic(ExecutionCrashedEvent)}
        # A workflow version's settings never change: cached by (id, version).
        self._policies: OrderedDict[tuple[UUID, int], AutoRetry | None] = OrderedDict()

    def run_batch(self, conn: Any = None, limit: int | None = None) -> int:
        """Record the retries the next events call for; return how many events were read."""
        rows, move = self.next_rows(limit)
        if move is None:
            return 0
        ended = [r["originator_id"] for r in rows if r["topic"] in self._topics]
        if not self._record(ended, move):
            # Another instance recorded this batch: read again from where it is now.
            return 0
        return len(rows)

    def _record(self, ended: list[UUID], statement: SideStatement) -> bool:
        """The retries of the ``ended`` executions, saved with ``statement``; False: a race."""
        wanted = self._retried_workflows(ended)
        done = self._recorded([retry_id(execution_id) for execution_id in wanted])
        retries = []
        for execution_id in wanted:
            if retry_id(execution_id) in done:
                continue  # recorded when this event was read before
            retry = self._retry_of(execution_id)
            if retry is not None:
                retries.append(retry)
        retries, takes = self._startable(retries)
        queue_rows = [
            side
            for retry in retries
            for side in enqueue(
                retry.id, retry.org_id, retry.workflow_id, not_before=retry.not_before
            )
        ]
        try:
            # Saved with no retries too: the statement still runs.
            self.app.save(*retries, side_statements=[*queue_rows, *takes, statement])
        except IntegrityError:
            return False
        for retry in retries:
            log.info(
                "automatic retry queued",
                execution_id=str(retry.id),
                retry_of=str(retry.retry_of),
                attempt=retry.attempt,
                not_before=retry.not_before.isoformat() if retry.not_before else None,
                org_id=retry.org_id,
            )
        return True

    def _startable(self, retries: list[Execution]) -> tuple[list[Execution], list[SideStatement]]:
        """The retries their organisations may start (not suspended, room left in
        ``executions_per_day``), and the counter takes to save with them; the
        others are not queued (logged)."""
        rooms: dict[str, DayRoom] = {}
        kept: list[Execution] = []
        takes: list[SideStatement] = []
        for retry in retries:
            room = rooms.get(retry.org_id) or self.day_limit.room(retry.org_id)
            rooms[retry.org_id] = room
            if room.suspended:
                log.warning(
                    "automatic retry not queued: the organisation is suspended",
                    execution_id=str(retry.retry_of),
                    org_id=retry.org_id,
                )
                continue
            if room.limited:
                if room.left <= 0:
                    log.warning(
                        "automatic retry not queued: " + room.refusal(),
                        execution_id=str(retry.retry_of),
                        org_id=retry.org_id,
                    )
                    continue
                takes.append(room.take())
                room = replace(room, left=room.left - 1)
            rooms[retry.org_id] = room
            kept.append(retry)
        return kept, takes

    def _retried_workflows(self, ended: list[UUID]) -> list[UUID]:
        """Those of ``ended`` whose workflow version has automatic retries, in order.

        From their ``Queued`` events alone (one query), so the endings of
        workflows without retries cost no aggregate loads.
        """
        if not ended:
            return []
        with self.app.event_store.datastore.get_connection() as db, db.cursor() as cur:
            cur.execute(
                f"SELECT originator_id, topic, state FROM {EVENTS_TABLE} "
                "WHERE originator_id = ANY(%s) AND originator_version = 1",
                (ended,),
            )
            rows = cur.fetchall()
        runs = {}
        for row in rows:
            queued: Any = decode_event(
                self.app.mapper, row["originator_id"], 1, row["topic"], row["state"]
            )
            if isinstance(queued, ExecutionQueuedEvent):
                runs[row["originator_id"]] = (queued.workflow_id, queued.workflow_version)
        for execution_id in ended:
            if execution_id not in runs:
                # Never silently pass over an ending: it becomes a dead letter.
                raise LookupError(f"execution {execution_id} ended without a Queued event")
        return [execution_id for execution_id in ended if self._policy(*runs[execution_id])]

    def _recorded(self, ids: list[UUID]) -> set[UUID]:
        if not ids:
            return set()
        with self.app.event_store.datastore.get_connection() as db, db.cursor() as cur:
            cur.execute(
                f"SELECT originator_id FROM {EVENTS_TABLE} "
                "WHERE originator_id = ANY(%s) AND originator_version = 1",
                (ids,),
            )
            return {row["originator_id"] for row in cur.fetchall()}

    def _retry_of(self, execution_id: UUID) -> Execution | None:
        """The retry an ended execution calls for (unsaved), or None."""
        old = self.executions.runner.load(execution_id)
        if old is None:
            return None
        policy = self._policy(old.workflow_id, old.workflow_version)
        assert old.finished_at is not None  # it ended: its end event stamped it
        not_before = (
            None if policy is None else policy.not_before(old.status, old.attempt, old.finished_at)
        )
        if not_before is None:
            return None  # not a status it retries, or its last attempt
        current = self._workflow(old.workflow_id)
        if current is None:
            return None
        try:
            return self._prepare(old, current, "failed_node", not_before)
        except RetryFromFailedNodeImpossible as exc:
            log.warning(
                "automatic retry from the start: an output it needs was truncated",
                execution_id=str(old.id),
                truncated_nodes=exc.node_ids,
            )
            return self._prepare(old, current, "start", not_before)
        except WorkflowDeleted:
            log.info("no automatic retry: the workflow was deleted", execution_id=str(old.id))
            return None
        except (ExecutionPayloadErased, DataSubjectErased):
            log.info("no automatic retry: its payload was erased", execution_id=str(old.id))
            return None

    def _prepare(
        self, old: Execution, workflow: Workflow, from_: Any, not_before: datetime
    ) -> Execution:
        return self.executions.prepare_retry(
            old,
            workflow,
            execution_id=retry_id(old.id),
            from_=from_,
            revision="original",
            mode="async",
            meta=EventMeta(
                org_id=old.org_id,
                actor=ACTOR,
                correlation_id=old.correlation_id,
                causation_id=str(old.id),
            ),
            not_before=not_before,
        )

    def _workflow(self, workflow_id: UUID, version: int | None = None) -> Workflow | None:
        try:
            loaded: object = self.app.repository.get(workflow_id, version=version)
        except AggregateNotFoundError:
            loaded = None
        if not isinstance(loaded, Workflow):
            # Never stall the log on one bad reference: say so, go on.
            log.error("execution of an unknown workflow", workflow_id=str(workflow_id))
            return None
        return loaded

    def _policy(self, workflow_id: UUID, version: int) -> AutoRetry | None:
        key = (workflow_id, version)
        if key in self._policies:
            self._policies.move_to_end(key)
            return self._policies[key]
        workflow = self._workflow(workflow_id, version)
        policy = None if workflow is None else AutoRetry.of(workflow.settings)
        self._policies[key] = policy
        while len(self._policies) > _POLICY_CACHE:
            self._policies.popitem(last=False)
        return policy

    def retry_dead_letters(self, letters: list[DeadLetter]) -> tuple[int, list[str]]:
        """Record the retries of dead-lettered endings after a fix; (resolved, errors)."""
        resolved, errors = 0, []
        for letter in letters:
            with self.app.event_store.datastore.get_connection() as db, db.cursor() as cur:
                cur.execute(
                    f"SELECT originator_id, topic FROM {EVENTS_TABLE} WHERE notification_id = %s",
                    (letter.position,),
                )
                rows = cur.fetchall()
            ended = [r["originator_id"] for r in rows if r["topic"] in self._topics]
            done = SideStatement(
                "UPDATE dead_letters SET resolved_at = now(), resolution = 'retried', "
                "last_seen = now() WHERE id = %s AND resolved_at IS NULL",
                (letter.id,),
                expect_row=True,
            )
            try:
                if self._record(ended, done):
                    resolved += 1
            except Exception as exc:
                errors.append(f"{letter.id}: {describe(exc)}")
                with self.app.event_store.datastore.get_connection() as db:
                    db.execute(
                        "UPDATE dead_letters SET attempts = attempts + 1, error = %s, "
                        "last_seen = now() WHERE id = %s",
                        (describe(exc), letter.id),
                    )
        return resolved, errors

    def catch_up(self) -> int:
        """Record until the log is exhausted (retries and dead letters as the live loop)."""
        with self.app.event_store.datastore.get_connection() as conn:
            return FollowerLoop(self, batch_size=self.batch_size).catch_up(conn)
