"""Webhook deliveries: find the active hook, check its auth, start a run of the current revision.

A delivery with a ``dedupe`` key is a keyed execution request whose key
and fingerprint are derived from (workflow, node, dedupe key): the first
records the run, every redelivery (also racing ones) gets its answer and
starts nothing, the same machinery as ``Idempotency-Key`` on the API.

The route table (``webhook_routes``) names the workflow and node that hold
``METHOD /hooks/{org}/{path}``; it changes in the same transaction as the
events that activate, edit or deactivate them, so an inactive workflow's
hook is not found. The run is of the revision current when it is recorded,
like any other execution, and records that revision.

Between the look-up and the run's save a deactivation can commit; the
delivery then still starts one run (the run was asked for while the hook
was active). Nothing else can slip through: a wrong token starts nothing.
What is guaranteed: a deactivation (or delete, or edit) committed before a
delivery's look-up began is seen by it, in every process: nothing about
the route is cached, only what follows from immutable rows.

One round trip finds the route and the workflow's head version (in one
snapshot); the workflow is taken from a per-process copy kept at exactly
that version, so a much-called hook neither reads the log nor copies the
aggregate. A version is immutable, so a copy at the head is the workflow.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from commands.errors import HookNotFound
from commands.executions import ExecutionCommands
from commands.handlers import WorkflowCommands
from commands.models import CommandContext, ExecutionResult, RunWorkflow
from commands.webhook_secrets import open_secret
from domain.triggers import WebhookTriggerParameters
from domain.webhooks import (
    ResponseMode,
    WebhookBodyInvalid,
    WebhookRefused,
    check_hook_path,
    check_signature,
    check_token,
    parse_body,
    webhook_item,
)
from domain.workflow import Workflow
from infrastructure.eventstore import EVENTS_TABLE

# Workflows kept at their head version, and parsed hook parameters, per process.
_KEPT_LIMIT = 1000

_ROUTE_QUERY = (
    "SELECT r.workflow_id, r.node_id, r.parameters::text AS parameters, "
    "s.token_sha256, s.hmac_secret, s.hmac_sealed::text AS hmac_sealed, "
    f"(SELECT max(e.originator_version) FROM {EVENTS_TABLE} e "
    " WHERE e.originator_id = r.workflow_id) AS head "
    "FROM webhook_routes r LEFT JOIN webhook_secrets s "
    "ON s.workflow_id = r.workflow_id AND s.node_id = r.node_id "
    "WHERE r.org_id = %s AND r.method = %s AND r.path = %s"
)


@dataclass(frozen=True)
class Delivery:
    """One call of a hook, as the HTTP adapter read it."""

    org_id: str
    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    query: Mapping[str, str]
    body: bytes
    correlation_id: str
    traceparent: str | None = None


@dataclass(frozen=True)
class Accepted:
    """A delivery that passed: the run to start, and how the hook answers."""

    workflow_id: UUID
    workflow: Workflow  # at the head version the route was found with; never mutated
    run: RunWorkflow  # sync for ``when_finished``, else async
    ctx: CommandContext
    response: ResponseMode


class HookDeliveries:
    def __init__(
        self,
        workflows: WorkflowCommands,
        executions: ExecutionCommands,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.workflows = workflows
        self.executions = executions
        self.clock = clock
        self._store = workflows.app.event_store
        self._workflows: OrderedDict[UUID, Workflow] = OrderedDict()
        self._parameters: OrderedDict[str, WebhookTriggerParameters] = OrderedDict()
        # Routes whose last delivery here answered when_finished (a hint, see below).
        self._sync_routes: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def accept(self, delivery: Delivery) -> Accepted:
        """The run a delivery asks for; ``HookNotFound`` or ``WebhookRefused`` otherwise.

        Starts nothing: the caller passes it to ``start`` (sync runs go
        through the sync-run bulkhead, like the API's).
        """
        route = self._route(delivery)
        workflow_id = route.workflow_id
        secret_headers: frozenset[str] = frozenset()
        auth = route.parameters.auth
        if auth.type == "header_token":
            token_sha256 = route.token_sha256
            if token_sha256 is None:
                raise WebhookRefused("this hook has no token: activate the workflow again")
            check_token(delivery.headers.get(auth.header), token_sha256)
            secret_headers = frozenset({auth.header})
        elif auth.type == "hmac_sha256":
            hmac_secret = self._hmac_secret(delivery.org_id, route)
            if hmac_secret is None:
                raise WebhookRefused("this hook has no secret: activate the workflow again")
            check_signature(
                hmac_secret.encode(),
                delivery.body,  # the raw bytes, as signed
                signature=delivery.headers.get(auth.signature_header),
                timestamp=delivery.headers.get(auth.timestamp_header),
                now=self.clock(),
                tolerance_s=auth.tolerance_s,
            )
            secret_headers = frozenset({auth.signature_header})
        body = parse_body(delivery.body, delivery.headers.get("content-type"))
        item = webhook_item(body, delivery.headers, delivery.query, secret_headers=secret_headers)
        dedupe_key = None
        if route.parameters.dedupe is not None:
            try:
                found = route.parameters.dedupe.rule().key(delivery.headers, body)
            except WebhookRefused as exc:  # a key the caller sent, but unusable
                raise WebhookBodyInvalid(exc.reason) from None
            if found is not None:
                identity = f"{workflow_id}\n{route.node_id}\n{found}".encode()
                dedupe_key = "webhook:" + hashlib.sha256(identity).hexdigest()
        ctx = CommandContext(
            org_id=delivery.org_id,
            actor=f"webhook:{route.node_id}",
            correlation_id=delivery.correlation_id,
            traceparent=delivery.traceparent,
            idempotency_key=dedupe_key,
            request_fingerprint=dedupe_key,
        )
        response = route.parameters.response
        run = RunWorkflow(input=item, mode="sync" if response == "when_finished" else "async")
        workflow = self._workflow_at(workflow_id, route.head, delivery.org_id)
        self._note_response(delivery, response)
        return Accepted(workflow_id, workflow, run, ctx, response)

    def deliver(self, delivery: Delivery) -> tuple[Accepted, ExecutionResult]:
        """``accept`` and ``start`` in one go (one thread hop for the caller)."""
        accepted = self.accept(delivery)
        return accepted, self.start(accepted)

    def probably_when_finished(self, delivery: Delivery) -> bool:
        """Whether this route's last delivery in this process answered ``when_finished``.

        Only a hint, to pick the pool the delivery is looked up on: whatever
        it says, ``accept`` decides on the current route.
        """
        with self._lock:
            return (delivery.org_id, delivery.method, delivery.path) in self._sync_routes

    def _note_response(self, delivery: Delivery, response: ResponseMode) -> None:
        route = (delivery.org_id, delivery.method, delivery.path)
        with self._lock:
            if response != "when_finished":
                self._sync_routes.pop(route, None)
                return
            self._sync_routes[route] = None
            self._sync_routes.move_to_end(route)
            while len(self._sync_routes) > _KEPT_LIMIT:
                self._sync_routes.popitem(last=False)

    def start(self, accepted: Accepted) -> ExecutionResult:
        return self.executions.start(
            accepted.workflow_id,
            accepted.run,
            accepted.ctx,
            trigger="webhook",
            workflow=accepted.workflow,
        )

    def _workflow_at(self, workflow_id: UUID, head: int, org_id: str) -> Workflow:
        """The workflow at version ``head``: the kept copy, or loaded (and kept)."""
        with self._lock:
            kept = self._workflows.get(workflow_id)
            if kept is not None and kept.version == head:
                self._workflows.move_to_end(workflow_id)
                return kept
        loaded = self.workflows.get(workflow_id, org_id)
        if loaded.version != head:
            # Recorded since the look-up (an Executed, an edit): the look-up's
            # snapshot decides, as if the delivery had come a moment earlier.
            at_head: object = self.workflows.app.repository.get(workflow_id, version=head)
            assert isinstance(at_head, Workflow)
            loaded = at_head
        with self._lock:
            self._workflows[workflow_id] = loaded
            self._workflows.move_to_end(workflow_id)
            while len(self._workflows) > _KEPT_LIMIT:
                self._workflows.popitem(last=False)
        return loaded

    def _parsed(self, text: str) -> WebhookTriggerParameters:
        with self._lock:
            parameters = self._parameters.get(text)
        if parameters is None:
            parameters = WebhookTriggerParameters.model_validate_json(text)
            with self._lock:
                self._parameters[text] = parameters
                while len(self._parameters) > _KEPT_LIMIT:
                    self._parameters.popitem(last=False)
        return parameters

    def _route(self, delivery: Delivery) -> _Route:
        """The active hook holding the delivery's route, with its secret and
        the workflow's head version; one query, no log read.

        The table holds the node's parameters as saved with the events that
        made the route, so it is the current revision's.
        """
        if check_hook_path(delivery.path) is not None:
            raise HookNotFound(delivery.org_id, delivery.method, delivery.path)
        with self._store.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                _ROUTE_QUERY, (delivery.org_id, delivery.method, delivery.path), prepare=True
            )
            row: Any = curs.fetchone()
        if row is None:
            raise HookNotFound(delivery.org_id, delivery.method, delivery.path)
        return _Route(
            workflow_id=row["workflow_id"],
            node_id=row["node_id"],
            parameters=self._parsed(row["parameters"]),
            token_sha256=row["token_sha256"],
            hmac_secret=row["hmac_secret"],
            hmac_sealed=row["hmac_sealed"],
            head=row["head"],
        )

    def _hmac_secret(self, org_id: str, route: _Route) -> str | None:
        """The hook's HMAC secret: sealed (opened here, in memory), or from before 0015."""
        if route.hmac_sealed is None:
            return route.hmac_secret
        keyring = self.workflows.keyring
        if keyring is None:
            raise WebhookRefused("this process has no master key to check the signature with")
        return open_secret(keyring, org_id, route.workflow_id, route.node_id, route.hmac_sealed)


@dataclass(frozen=True)
class _Route:
    workflow_id: UUID
    node_id: str
    parameters: WebhookTriggerParameters
    token_sha256: str | None
    hmac_secret: str | None
    hmac_sealed: str | None  # jsonb text of the sealed secret (commands/webhook_secrets.py)
    head: int  # the workflow's stream version in the look-up's snapshot
