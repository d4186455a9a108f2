"""Command handlers: load, decide (in the domain), save. One command, one transaction.

Idempotency: a command sent with an ``Idempotency-Key`` stores its answer in
the same transaction as its events (see ``EventStoreRecorder``). A retry finds
that answer and writes nothing; a racing duplicate fails on the unique key
and then finds the winner's answer. A new workflow's id is derived from the
key, so even two racing creates can only ever make one workflow.

Revisions and versions: a command names the revision it expects (If-Match,
the workflow's ``version`` to clients; see ``domain/workflow.py``), and is
saved at the stream version after the one it was decided on. The log's
unique (id, version) key refuses that save if anything was recorded
meanwhile; the command then reads the log again and decides anew
(``_decide_and_save``): another edit moved the revision (409, or 410 after a
delete), a run did not (``Executed``), and the same decision is saved on the
fresh state. So two editors conflict, and runs never block an edit: after
``HOLD_RUNS_AFTER`` lost saves the edit holds the runs follower off the
workflow until it has saved (``runs_held_off``).

Webhook routes: an active workflow's (method, path) pairs live in
``webhook_routes``, rewritten in the same transaction as every event that
changes them (``_route_statements``). A decision that leaves the workflow
active first checks that no other workflow holds its routes (409 naming it);
two racing activations of one route both pass that check, and the table's
primary key refuses the second save, which then decides again and sees the
first's route.

Loading: when this process itself committed exactly the revision the client
expects, the command decides on that copy without reading the log (see
``LastCommitted``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import secrets
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from commands.application import WorkflowApplication
from commands.errors import (
    HookRouteTaken,
    HookRouteTakenOutsideProject,
    IdempotencyKeyReused,
    NoSuchVersion,
    ShareNotFound,
    VersionConflict,
    WorkflowBusy,
    WorkflowLimitReached,
    WorkflowNotFound,
)
from commands.history import version_at_revision
from commands.models import (
    CommandContext,
    CommandResult,
    CreateWorkflow,
    MoveWorkflow,
    RevertWorkflow,
    RotateWebhookSecret,
    ShareWorkflow,
    UpdateWorkflow,
)
from commands.projects import ProjectNotFound, ProjectScopeRefused, load_project
from commands.scope import Access, ensure_access
from commands.webhook_secrets import seal_secret
from commands.workflow_quota import count_create, count_delete, reached_limit
from commands.workflow_runs import runs_held_off
from domain.meta import EventMeta
from domain.triggers import SECRET_AUTH, webhook_routes
from domain.webhooks import hash_token
from domain.workflow import Workflow
from infrastructure.eventstore import IdempotencyRecord, SideStatement
from infrastructure.keyring import Keyring

_IDEMPOTENT_ID_NAMESPACE = uuid.UUID("6f1c8e52-3a7d-4c1e-9b8a-52d0c6a1e7f3")

# How often a command decides again after runs were recorded under it. Each
# loss means the runs follower committed an Executed between our read and our
# save (it records a whole batch of runs per transaction); losing this often
# in a row means the workflow is too busy for now (503, retry).
SAVE_ATTEMPTS = 10
# Lost saves after which an edit holds the runs follower off its workflow.
HOLD_RUNS_AFTER = 3

# A decision on a loaded workflow: record its events, or return False if
# there is nothing to record (an update that changes nothing).
Decision = Callable[[Workflow], bool]


def idempotent_workflow_id(org_id: str, key: str) -> UUID:
    """The id a workflow created with this key gets: uuid5(uuid5(ns, org), key)."""
    return uuid.uuid5(uuid.uuid5(_IDEMPOTENT_ID_NAMESPACE, org_id), key)


class LastCommitted:
    """The workflows this process committed last, each exactly as committed.

    Why trusting it is safe: a command decides on a copy at stream version V
    (revision R, the one the client expects) only to record V+1. Should
    anyone have recorded V+1 meanwhile (another process's edit, or the runs
    follower's ``Executed``), the save fails on the log's unique (id, version)
    key, and the command reads the log to its head and decides again there:
    the same 409 (410 if it was a delete) as after a fresh read if the
    revision moved, or the same decision saved on the fresh state if only
    runs were recorded. So a copy kept from our own commit can stand in for
    reading the log, but only at exactly the revision the client expects: a
    stale copy can cost a retry, never a lost update. A command that would
    record nothing has no save to catch a stale copy: it reads the log
    before it answers. Kept workflows are never
    mutated; commands get copies. Bounded: least recently used go first.
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

    def at_revision(self, workflow_id: UUID, revision: int) -> Workflow | None:
        """A private copy of the kept workflow if it is at exactly ``revision``."""
        with self._lock:
            workflow = self._workflows.get(workflow_id)
        if workflow is None or workflow.revision != revision:
            return None
        return copy.deepcopy(workflow)


class WorkflowCommands:
    """The write side's use cases for workflows."""

    def __init__(
        self, app: WorkflowApplication, keyring: Keyring | None = None, *, max_workflows: int = 0
    ) -> None:
        self.app = app
        # The global max_workflows an organisation's own limit overrides (0: none).
        self.max_workflows = max_workflows
        self.last_committed = LastCommitted()
        # Seals hook HMAC secrets (commands/webhook_secrets.py); without one
        # (tests that never activate an hmac hook) they are kept as before.
        self.keyring = keyring

    def create(
        self,
        command: CreateWorkflow,
        ctx: CommandContext,
        origin: dict[str, Any] | None = None,
    ) -> CommandResult:
        """A new workflow; ``origin`` (a template, an import) goes into its ``Created``."""
        payload = command.definition()
        project_id = self._creation_project(command.project_id, ctx)
        asked: Any = payload if origin is None else {"definition": payload, "origin": origin}
        # The project it goes to, not the one named: a project's key retrying an
        # organisation-wide key's request must not be answered with its workflow.
        # (The default project's requests hash as before projects: retries span upgrades.)
        fingerprinted = asked if project_id is None else [asked, str(project_id)]
        fingerprint = request_fingerprint(ctx, "create", None, None, fingerprinted)
        if ctx.idempotency_key is not None:
            prior = self._prior_answer(ctx, fingerprint)
            if prior is not None:
                return prior
            workflow_id = idempotent_workflow_id(ctx.org_id, ctx.idempotency_key)
        else:
            workflow_id = uuid.uuid4()
        workflow = Workflow.create(
            workflow_id=workflow_id,
            definition=payload,
            meta=_meta(ctx),
            origin=origin,
            project_id=project_id,
        )
        counted = [count_create(ctx.org_id, self.max_workflows)]
        try:
            return self._save(workflow, ctx, fingerprint, status_code=201, side=counted)
        except IntegrityError:
            # The organisation is at its max_workflows, or (only a keyed create
            # can collide: its id comes from the key) the same request won the
            # race, or the key was used for another one.
            if ctx.idempotency_key is not None:
                prior = self._prior_answer(ctx, fingerprint)
                if prior is not None:
                    return prior
            reached = reached_limit(self.app, ctx.org_id, self.max_workflows)
            if reached is not None:
                raise WorkflowLimitReached(ctx.org_id, *reached) from None
            current = self.get(workflow.id, ctx.org_id)
            current.ensure_not_deleted()
            raise VersionConflict(workflow.id, 0, current.revision) from None

    def _creation_project(self, wanted: UUID | None, ctx: CommandContext) -> UUID | None:
        """The project a new workflow goes to: the one named, else the key's (None: default).

        A project-scoped key names only its own project (any other is not found).
        """
        if ctx.project_id is not None and wanted not in (None, ctx.project_id):
            raise ProjectNotFound(wanted)  # type: ignore[arg-type]
        target = wanted or ctx.project_id
        if target is None:
            return None
        project = load_project(self.app, target, ctx.org_id)
        if project is not None:
            project.ensure_not_archived()
        return target

    def move(
        self,
        workflow_id: UUID,
        command: MoveWorkflow,
        expected_revision: int,
        ctx: CommandContext,
    ) -> CommandResult:
        """Move a workflow to another project of its organisation (organisation-wide keys only).

        A project's key sees one project: moving is deciding between two, so
        it is the organisation's (403 for a scoped key that sees the workflow).
        """
        payload = {"project_id": str(command.project_id)}
        fingerprint = request_fingerprint(ctx, "move", workflow_id, expected_revision, payload)
        meta = _meta(ctx)
        if ctx.project_id is None:
            project = load_project(self.app, command.project_id, ctx.org_id)
            if project is not None:
                project.ensure_not_archived()

        def decide(workflow: Workflow) -> bool:
            if ctx.project_id is not None:
                raise ProjectScopeRefused("move workflows between projects")
            return workflow.move(command.project_id, meta)

        return self._decide_and_save(
            workflow_id, expected_revision, ctx, fingerprint, decide, access=Access.VIEW
        )

    def share(
        self,
        workflow_id: UUID,
        command: ShareWorkflow,
        expected_revision: int,
        ctx: CommandContext,
    ) -> CommandResult:
        """Grant another project of the organisation ``viewer`` or ``editor`` on the workflow."""
        payload = {"project_id": str(command.project_id), "role": command.role}
        fingerprint = request_fingerprint(ctx, "share", workflow_id, expected_revision, payload)
        meta = _meta(ctx)
        project = load_project(self.app, command.project_id, ctx.org_id)
        if project is not None:
            project.ensure_not_archived()
        return self._decide_and_save(
            workflow_id,
            expected_revision,
            ctx,
            fingerprint,
            lambda workflow: workflow.share(command.project_id, command.role, meta),
            access=Access.OWN,
        )

    def unshare(
        self, workflow_id: UUID, project_id: UUID, expected_revision: int, ctx: CommandContext
    ) -> CommandResult:
        """Revoke a project's grant; a project holding none is a 404 naming it."""
        fingerprint = request_fingerprint(
            ctx, "unshare", workflow_id, expected_revision, str(project_id)
        )
        meta = _meta(ctx)

        def decide(workflow: Workflow) -> bool:
            if str(project_id) not in workflow.shares:
                raise ShareNotFound(workflow_id, project_id)
            return workflow.unshare(project_id, meta)

        return self._decide_and_save(
            workflow_id, expected_revision, ctx, fingerprint, decide, access=Access.OWN
        )

    def update(
        self,
        workflow_id: UUID,
        command: UpdateWorkflow,
        expected_revision: int,
        ctx: CommandContext,
    ) -> CommandResult:
        changes = command.changes()
        fingerprint = request_fingerprint(ctx, "update", workflow_id, expected_revision, changes)
        meta = _meta(ctx)
        return self._decide_and_save(
            workflow_id,
            expected_revision,
            ctx,
            fingerprint,
            lambda workflow: workflow.update(changes, meta),
        )

    def delete(
        self, workflow_id: UUID, expected_revision: int, ctx: CommandContext
    ) -> CommandResult:
        fingerprint = request_fingerprint(ctx, "delete", workflow_id, expected_revision, None)
        meta = _meta(ctx)

        def decide(workflow: Workflow) -> bool:
            workflow.delete(meta)
            return True

        return self._decide_and_save(workflow_id, expected_revision, ctx, fingerprint, decide)

    def revert(
        self,
        workflow_id: UUID,
        command: RevertWorkflow,
        expected_revision: int,
        ctx: CommandContext,
    ) -> CommandResult:
        """A new ``Updated`` event restoring the definition of revision ``to_version``."""
        payload = command.model_dump()
        fingerprint = request_fingerprint(ctx, "revert", workflow_id, expected_revision, payload)
        meta = _meta(ctx)
        then: list[Workflow] = []  # read once: an earlier revision never changes

        def decide(workflow: Workflow) -> bool:
            if command.to_version > workflow.revision:
                raise NoSuchVersion(workflow_id, command.to_version, workflow.revision)
            if not then:
                then.append(self.get(workflow_id, ctx.org_id, revision=command.to_version))
            return workflow.update(then[0].definition(), meta)

        return self._decide_and_save(workflow_id, expected_revision, ctx, fingerprint, decide)

    def activate(
        self, workflow_id: UUID, expected_revision: int, ctx: CommandContext
    ) -> CommandResult:
        """Switch the triggers of the revision the client saw on (no new revision).

        Each ``header_token`` and ``hmac_sha256`` hook gets a new secret,
        shown in this answer only (see ``_hook_secrets``).
        """
        fingerprint = request_fingerprint(ctx, "activate", workflow_id, expected_revision, None)
        meta = _meta(ctx)
        return self._decide_and_save(
            workflow_id,
            expected_revision,
            ctx,
            fingerprint,
            lambda workflow: workflow.activate(meta),
        )

    def deactivate(
        self, workflow_id: UUID, expected_revision: int, ctx: CommandContext
    ) -> CommandResult:
        fingerprint = request_fingerprint(ctx, "deactivate", workflow_id, expected_revision, None)
        meta = _meta(ctx)
        return self._decide_and_save(
            workflow_id,
            expected_revision,
            ctx,
            fingerprint,
            lambda workflow: workflow.deactivate(meta),
        )

    def rotate_webhook_secret(
        self,
        workflow_id: UUID,
        command: RotateWebhookSecret,
        expected_revision: int,
        ctx: CommandContext,
    ) -> CommandResult:
        """A new secret for one active hook, answered once; the old one stops working."""
        payload = command.model_dump()
        fingerprint = request_fingerprint(ctx, "rotate", workflow_id, expected_revision, payload)
        meta = _meta(ctx)

        def decide(workflow: Workflow) -> bool:
            workflow.rotate_webhook_secret(command.node_id, meta)
            return True

        return self._decide_and_save(
            workflow_id, expected_revision, ctx, fingerprint, decide, renew=command.node_id
        )

    def get(self, workflow_id: UUID, org_id: str, revision: int | None = None) -> Workflow:
        """The workflow as the write side sees it: latest, or as revision ``revision`` made it."""
        version = None
        if revision is not None:
            version = version_at_revision(self.app, workflow_id, revision)
            if version is None:
                raise WorkflowNotFound(workflow_id)
        try:
            workflow: object = self.app.repository.get(workflow_id, version=version)
        except AggregateNotFoundError:
            raise WorkflowNotFound(workflow_id) from None
        if not isinstance(workflow, Workflow) or workflow.org_id != org_id:
            raise WorkflowNotFound(workflow_id)
        return workflow

    def _decide_and_save(
        self,
        workflow_id: UUID,
        expected_revision: int,
        ctx: CommandContext,
        fingerprint: str,
        decide: Decision,
        renew: str | None = None,
        access: Access = Access.EDIT,
    ) -> CommandResult:
        """Decide on the workflow at ``expected_revision`` and save at the version loaded.

        A decision that leaves the workflow active saves its routes, and a
        new secret for each hook that needs one and has none (activation:
        all of them, as deactivation dropped them; an edit: the hooks it
        added or whose auth it changed; a rotation: the node ``renew``),
        answered once.

        A lost save is decided again on the log's head (see the module's
        docstring): the decision depends only on the definition, which is
        the same at the same revision, and the revision is checked anew.
        """
        if ctx.idempotency_key is not None:
            if ctx.project_id is not None:
                # Keys are the organisation's: a replay answers nothing outside the project.
                ensure_access(self.get(workflow_id, ctx.org_id), ctx, Access.VIEW)
            prior = self._prior_answer(ctx, fingerprint)
            if prior is not None:
                return prior
        workflow = self.last_committed.at_revision(workflow_id, expected_revision)
        fresh = False  # read from the log (not the kept copy) for this decision
        if workflow is None or workflow.org_id != ctx.org_id:
            workflow, fresh = self._at_head(workflow_id, expected_revision, ctx), True
        else:
            ensure_access(workflow, ctx, Access.VIEW)  # outside the key's project: 404 first
            workflow.ensure_not_deleted()
        lost = 0
        with contextlib.ExitStack() as holding:
            for _ in range(SAVE_ATTEMPTS):
                ensure_access(workflow, ctx, access)
                was_active = workflow.active
                if not decide(workflow):
                    if fresh:
                        return self._unchanged(workflow, ctx, fingerprint)
                    # No save, so no key checks the kept copy against the log:
                    # read it before answering "unchanged" (an edit is a 409).
                    workflow, fresh = self._at_head(workflow_id, expected_revision, ctx), True
                    continue
                side: Sequence[SideStatement] = ()
                generated: dict[str, str] = {}
                if was_active or workflow.active:
                    self._ensure_routes_free(workflow, ctx)
                    generated = self._hook_secrets(workflow, renew)
                    hook_secrets = _secret_statements(workflow, generated, self.keyring)
                    side = _route_statements(workflow) + hook_secrets
                if workflow.deleted:
                    side = (*side, count_delete(workflow.org_id))
                try:
                    result = self._save(workflow, ctx, fingerprint, status_code=200, side=side)
                    return replace(result, webhook_secrets=generated)
                except IntegrityError:
                    # Someone saved first: the same keyed request, another edit,
                    # runs recorded by the follower, or another workflow's
                    # activation of one of our routes (seen by the next check).
                    # Read even after the last attempt: an edit is still a 409 (or 410), not "busy".
                    if ctx.idempotency_key is not None:
                        prior = self._prior_answer(ctx, fingerprint)
                        if prior is not None:
                            return prior
                    lost += 1
                    if lost == HOLD_RUNS_AFTER:
                        # Runs keep winning: hold them off from the next read to the save.
                        holding.enter_context(runs_held_off(self.app, workflow_id))
                    workflow, fresh = self._at_head(workflow_id, expected_revision, ctx), True
            raise WorkflowBusy(workflow_id, SAVE_ATTEMPTS)

    def _at_head(self, workflow_id: UUID, expected_revision: int, ctx: CommandContext) -> Workflow:
        """The workflow read from the log, if it is still at ``expected_revision``."""
        workflow = self.get(workflow_id, ctx.org_id)
        ensure_access(workflow, ctx, Access.VIEW)  # outside the key's project: 404 first
        workflow.ensure_not_deleted()
        if workflow.revision != expected_revision:
            raise VersionConflict(workflow_id, expected_revision, workflow.revision)
        return workflow

    def _ensure_routes_free(self, workflow: Workflow, ctx: CommandContext) -> None:
        """Raise ``HookRouteTaken`` if another workflow holds a route this one would hold
        (``HookRouteTakenOutsideProject``, naming no workflow, if ``ctx``'s project does
        not see the holder)."""
        if not workflow.active:
            return
        wanted = {(route.method, route.path) for route in webhook_routes(workflow.nodes)}
        if not wanted:
            return
        with self.app.event_store.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "SELECT method, path, workflow_id FROM webhook_routes "
                "WHERE org_id = %s AND workflow_id <> %s",
                (workflow.org_id, workflow.id),
            )
            for row in curs.fetchall():
                if (row["method"], row["path"]) in wanted:
                    method, path = row["method"], row["path"]
                    if ctx.project_id is not None and not self._sees(row["workflow_id"], ctx):
                        raise HookRouteTakenOutsideProject(workflow.id, method, path)
                    raise HookRouteTaken(workflow.id, method, path, row["workflow_id"])

    def _sees(self, workflow_id: UUID, ctx: CommandContext) -> bool:
        try:
            ensure_access(self.get(workflow_id, ctx.org_id), ctx, Access.VIEW)
        except WorkflowNotFound:
            return False
        return True

    def _hook_secrets(self, workflow: Workflow, renew: str | None = None) -> dict[str, str]:
        """New secrets for the active workflow's hooks that need one of a kind they lack,
        and for the hook ``renew``."""
        if not workflow.active:
            return {}
        needed = {
            route.node_id: route.parameters.auth.type
            for route in webhook_routes(workflow.nodes)
            if route.parameters.auth.type in SECRET_AUTH
        }
        if not needed:
            return {}
        with self.app.event_store.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                "SELECT node_id, token_sha256 IS NOT NULL AS is_token FROM webhook_secrets "
                "WHERE workflow_id = %s",
                (workflow.id,),
            )
            held = {
                row["node_id"]: "header_token" if row["is_token"] else "hmac_sha256"
                for row in curs.fetchall()
            }
        return {
            node_id: secrets.token_urlsafe(32)
            for node_id, kind in needed.items()
            if held.get(node_id) != kind or node_id == renew
        }

    def _save(
        self,
        workflow: Workflow,
        ctx: CommandContext,
        fingerprint: str,
        status_code: int,
        side: Sequence[SideStatement] = (),
    ) -> CommandResult:
        """Record the workflow's new events; ``IntegrityError`` if anyone saved first."""
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
        recordings = self.app.save(workflow, idempotency=record, side_statements=side)
        self.last_committed.remember(workflow)
        return CommandResult(
            workflow_id=workflow.id,
            version=workflow.revision,
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
            version=workflow.revision,
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
        # The record keeps the stream version (it names the event, for the
        # position); the client was answered with the revision there.
        then: object = self.app.repository.get(
            record.aggregate_id, version=record.aggregate_version
        )
        assert isinstance(then, Workflow)
        return CommandResult(
            workflow_id=record.aggregate_id,
            version=then.revision,
            position=self.app.event_store.position_of(
                record.aggregate_id, record.aggregate_version
            ),
            status_code=record.status_code,
        )


def _route_statements(workflow: Workflow) -> list[SideStatement]:
    """Make ``webhook_routes`` hold exactly the routes of ``workflow`` as saved.

    None (and no hook secrets) if it is inactive or deleted; a route another
    workflow holds fails the save on the primary key.
    """
    statements = [
        SideStatement("DELETE FROM webhook_routes WHERE workflow_id = %s", (workflow.id,))
    ]
    if not workflow.active:
        # Its secrets go too: the next activation generates new ones.
        statements.append(
            SideStatement("DELETE FROM webhook_secrets WHERE workflow_id = %s", (workflow.id,))
        )
    else:
        statements += [
            SideStatement(
                "INSERT INTO webhook_routes "
                "(org_id, method, path, workflow_id, node_id, parameters) "
                "VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
                (
                    workflow.org_id,
                    route.method,
                    route.path,
                    workflow.id,
                    route.node_id,
                    route.parameters.model_dump_json(),
                ),
            )
            for route in webhook_routes(workflow.nodes)
        ]
    return statements


def _secret_statements(
    workflow: Workflow, generated: dict[str, str], keyring: Keyring | None
) -> list[SideStatement]:
    """Keep each new hook secret (a token as its SHA-256, an HMAC secret sealed under
    the organisation's key), replacing the node's old one."""
    auth = {route.node_id: route.parameters.auth.type for route in webhook_routes(workflow.nodes)}
    statements = []
    for node_id, secret in generated.items():
        token_sha256 = hmac_secret = hmac_sealed = None
        if auth[node_id] == "header_token":
            token_sha256 = hash_token(secret)
        elif keyring is not None:
            hmac_sealed = seal_secret(keyring, workflow.org_id, workflow.id, node_id, secret)
        else:
            hmac_secret = secret
        statements.append(
            SideStatement(
                "INSERT INTO webhook_secrets "
                "(workflow_id, node_id, token_sha256, hmac_secret, hmac_sealed) "
                "VALUES (%s, %s, %s, %s, %s::jsonb) ON CONFLICT (workflow_id, node_id) DO UPDATE "
                "SET token_sha256 = excluded.token_sha256, hmac_secret = excluded.hmac_secret, "
                "hmac_sealed = excluded.hmac_sealed, created_at = now()",
                (workflow.id, node_id, token_sha256, hmac_secret, hmac_sealed),
            )
        )
    return statements


def _meta(ctx: CommandContext) -> EventMeta:
    return EventMeta(
        org_id=ctx.org_id,
        actor=ctx.actor,
        correlation_id=ctx.correlation_id,
        idempotency_key=ctx.idempotency_key,
        traceparent=ctx.traceparent,
    )


def request_fingerprint(
    ctx: CommandContext,
    command: str,
    workflow_id: UUID | None,
    expected_revision: int | None,
    payload: Any,
) -> str:
    """A stable hash of what a request asks for, to tell a retry from a new request.

    Only keyed requests are ever compared, so the others skip the work.
    """
    if ctx.idempotency_key is None:
        return ""
    if ctx.request_fingerprint is not None:
        return ctx.request_fingerprint
    canonical = json.dumps(
        [command, str(workflow_id) if workflow_id else None, expected_revision, payload],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
