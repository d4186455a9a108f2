"""Command handlers: load, decide (in the domain), save. One command, one transaction.

Idempotency: a command sent with an ``Idempotency-Key`` stores its answer in
the same transaction as its events (see ``EventStoreRecorder``). A retry finds
that answer and writes nothing; a racing duplicate fails on the unique key
and then finds the winner's answer. A new workflow's id is derived from the
key, so even two racing creates can only ever make one workflow.

Loading: a command names the version it expects (If-Match). When this process
itself committed exactly that version, the command decides on that copy
without reading the log (see ``LastCommitted``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import uuid
from collections import OrderedDict
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from commands.application import WorkflowApplication
from commands.errors import (
    IdempotencyKeyReused,
    NoSuchVersion,
    VersionConflict,
    WorkflowNotFound,
)
from commands.models import (
    CommandContext,
    CommandResult,
    CreateWorkflow,
    RevertWorkflow,
    UpdateWorkflow,
)
from domain.meta import EventMeta
from domain.workflow import Workflow
from infrastructure.eventstore import IdempotencyRecord

_IDEMPOTENT_ID_NAMESPACE = uuid.UUID("6f1c8e52-3a7d-4c1e-9b8a-52d0c6a1e7f3")


def idempotent_workflow_id(org_id: str, key: str) -> UUID:
    """The id a workflow created with this key gets: uuid5(uuid5(ns, org), key)."""
    return uuid.uuid5(uuid.uuid5(_IDEMPOTENT_ID_NAMESPACE, org_id), key)


class LastCommitted:
    """The workflows this process committed last, each exactly as committed.

    Why trusting it is safe: a command decides on version N only to record
    N+1. Should anyone (another process, the runs follower) have recorded
    N+1 meanwhile, the save fails on the log's unique (id, version) key, and
    the client gets the same 409 (410 if it was a delete) as after a fresh
    read. So a copy kept from
    our own commit can stand in for reading the log, but only at exactly the
    version the client expects. Kept workflows are never mutated; commands
    get copies. Bounded: least recently used go first.
    """

    def __init__(self, limit: int = 2000) -> None:
        self._limit = limit
        self._workflows: OrderedDict[UUID, Workflow] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, workflow: Workflow) -> None:
        """Keep ``workflow``, whose events were just committed; the caller lets go of it."""
        with self._lock:
            known = self._workflows.get(workflow.id)
            if known is not None and known.version >= workflow.version:
                return  # a racing thread kept a newer one
            self._workflows[workflow.id] = workflow
            self._workflows.move_to_end(workflow.id)
            if len(self._workflows) > self._limit:
                self._workflows.popitem(last=False)

    def at_version(self, workflow_id: UUID, version: int) -> Workflow | None:
        """A private copy of the kept workflow if it is at exactly ``version``."""
        with self._lock:
            workflow = self._workflows.get(workflow_id)
        if workflow is None or workflow.version != version:
            return None
        return copy.deepcopy(workflow)


class WorkflowCommands:
    """The write side's use cases for workflows."""

    def __init__(self, app: WorkflowApplication) -> None:
        self.app = app
        self.last_committed = LastCommitted()

    def create(self, command: CreateWorkflow, ctx: CommandContext) -> CommandResult:
        payload = command.model_dump()
        fingerprint = request_fingerprint(ctx, "create", None, None, payload)
        if ctx.idempotency_key is not None:
            prior = self._prior_answer(ctx, fingerprint)
            if prior is not None:
                return prior
            workflow_id = idempotent_workflow_id(ctx.org_id, ctx.idempotency_key)
        else:
            workflow_id = uuid.uuid4()
        workflow = Workflow.create(workflow_id=workflow_id, definition=payload, meta=_meta(ctx))
        return self._save(workflow, ctx, fingerprint, status_code=201, expected_version=0)

    def update(
        self,
        workflow_id: UUID,
        command: UpdateWorkflow,
        expected_version: int,
        ctx: CommandContext,
    ) -> CommandResult:
        changes = command.changes()
        fingerprint = request_fingerprint(ctx, "update", workflow_id, expected_version, changes)
        if ctx.idempotency_key is not None:
            prior = self._prior_answer(ctx, fingerprint)
            if prior is not None:
                return prior
        workflow = self._load_for_command(workflow_id, expected_version, ctx)
        if not workflow.update(changes, _meta(ctx)):
            return self._unchanged(workflow, ctx, fingerprint)
        return self._save(workflow, ctx, fingerprint, 200, expected_version)

    def delete(
        self, workflow_id: UUID, expected_version: int, ctx: CommandContext
    ) -> CommandResult:
        fingerprint = request_fingerprint(ctx, "delete", workflow_id, expected_version, None)
        if ctx.idempotency_key is not None:
            prior = self._prior_answer(ctx, fingerprint)
            if prior is not None:
                return prior
        workflow = self._load_for_command(workflow_id, expected_version, ctx)
        workflow.delete(_meta(ctx))
        return self._save(workflow, ctx, fingerprint, 200, expected_version)

    def revert(
        self,
        workflow_id: UUID,
        command: RevertWorkflow,
        expected_version: int,
        ctx: CommandContext,
    ) -> CommandResult:
        """A new ``Updated`` event restoring the definition of ``to_version``."""
        payload = command.model_dump()
        fingerprint = request_fingerprint(ctx, "revert", workflow_id, expected_version, payload)
        if ctx.idempotency_key is not None:
            prior = self._prior_answer(ctx, fingerprint)
            if prior is not None:
                return prior
        workflow = self._load_for_command(workflow_id, expected_version, ctx)
        if command.to_version > workflow.version:
            raise NoSuchVersion(workflow_id, command.to_version, workflow.version)
        then = self.get(workflow_id, ctx.org_id, version=command.to_version)
        if not workflow.update(then.definition(), _meta(ctx)):
            return self._unchanged(workflow, ctx, fingerprint)
        return self._save(workflow, ctx, fingerprint, 200, expected_version)

    def get(self, workflow_id: UUID, org_id: str, version: int | None = None) -> Workflow:
        """The workflow as the write side sees it (latest, or at a version)."""
        try:
            workflow: object = self.app.repository.get(workflow_id, version=version)
        except AggregateNotFoundError:
            raise WorkflowNotFound(workflow_id) from None
        if not isinstance(workflow, Workflow) or workflow.org_id != org_id:
            raise WorkflowNotFound(workflow_id)
        return workflow

    def _load_for_command(
        self, workflow_id: UUID, expected_version: int, ctx: CommandContext
    ) -> Workflow:
        workflow = self.last_committed.at_version(workflow_id, expected_version)
        if workflow is None or workflow.org_id != ctx.org_id:
            workflow = self.get(workflow_id, ctx.org_id)
        workflow.ensure_not_deleted()
        if workflow.version != expected_version:
            raise VersionConflict(workflow_id, expected_version, workflow.version)
        return workflow

    def _save(
        self,
        workflow: Workflow,
        ctx: CommandContext,
        fingerprint: str,
        status_code: int,
        expected_version: int,
    ) -> CommandResult:
        record = None
        if ctx.idempotency_key is not None:
            record = IdempotencyRecord(
                org_id=ctx.org_id,
                key=ctx.idempotency_key,
                request_hash=fingerprint,
                aggregate_id=workflow.id,
                aggregate_version=workflow.version,
                status_code=status_code,
            )
        try:
            recordings = self.app.save(workflow, idempotency=record)
        except IntegrityError:
            # Someone else saved first: the same idempotent request, or a
            # concurrent command on the same version.
            if ctx.idempotency_key is not None:
                prior = self._prior_answer(ctx, fingerprint)
                if prior is not None:
                    return prior
            current = self.get(workflow.id, ctx.org_id)
            current.ensure_not_deleted()
            raise VersionConflict(workflow.id, expected_version, current.version) from None
        self.last_committed.remember(workflow)
        return CommandResult(
            workflow_id=workflow.id,
            version=workflow.version,
            position=recordings[-1].notification.id,
            status_code=status_code,
        )

    def _unchanged(
        self, workflow: Workflow, ctx: CommandContext, fingerprint: str
    ) -> CommandResult:
        """Nothing to record; still remember the answer for a keyed retry."""
        store = self.app.event_store
        if ctx.idempotency_key is not None:
            winner = store.insert_idempotency(
                IdempotencyRecord(
                    org_id=ctx.org_id,
                    key=ctx.idempotency_key,
                    request_hash=fingerprint,
                    aggregate_id=workflow.id,
                    aggregate_version=workflow.version,
                    status_code=200,
                )
            )
            return self._answer(winner, ctx, fingerprint)
        return CommandResult(
            workflow_id=workflow.id,
            version=workflow.version,
            position=store.position_of(workflow.id, workflow.version),
            status_code=200,
        )

    def _prior_answer(self, ctx: CommandContext, fingerprint: str) -> CommandResult | None:
        assert ctx.idempotency_key is not None
        record = self.app.event_store.find_idempotency(ctx.org_id, ctx.idempotency_key)
        return None if record is None else self._answer(record, ctx, fingerprint)

    def _answer(
        self, record: IdempotencyRecord, ctx: CommandContext, fingerprint: str
    ) -> CommandResult:
        if record.request_hash != fingerprint:
            raise IdempotencyKeyReused(record.key)
        return CommandResult(
            workflow_id=record.aggregate_id,
            version=record.aggregate_version,
            position=self.app.event_store.position_of(
                record.aggregate_id, record.aggregate_version
            ),
            status_code=record.status_code,
        )


def _meta(ctx: CommandContext) -> EventMeta:
    return EventMeta(
        org_id=ctx.org_id,
        actor=ctx.actor,
        correlation_id=ctx.correlation_id,
        idempotency_key=ctx.idempotency_key,
    )


def request_fingerprint(
    ctx: CommandContext,
    command: str,
    workflow_id: UUID | None,
    expected_version: int | None,
    payload: Any,
) -> str:
    """A stable hash of what a request asks for, to tell a retry from a new request.

    Only keyed requests are ever compared, so the others skip the work.
    """
    if ctx.idempotency_key is None:
        return ""
    canonical = json.dumps(
        [command, str(workflow_id) if workflow_id else None, expected_version, payload],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
