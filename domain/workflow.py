"""The Workflow aggregate: a graph of nodes owned by one organisation.

Public methods validate and decide; the ``@event`` methods only apply state,
so replaying the log never re-runs validation rules that may have changed.
Event state is JSON-native (dicts, lists, str, numbers) so what comes back
from the store equals what went in.

Two numbers, two meanings:

- ``revision``: the definition's revision, what clients see as the workflow's
  ``version`` (``ETag``, ``If-Match``). 1 at ``Created``, +1 on every
  definition change (``Updated``, which a revert is too, and ``Deleted``); a
  run (``Executed``) leaves it, and so does (de)activation (``Activated``,
  ``Deactivated``): it switches the triggers on or off, it edits nothing.
  Counted by the apply methods, so it needs no field in the events and
  replays the same from logs older than it.
- ``version``: eventsourcing's stream version, +1 on every event, runs
  included. The log's unique (id, version) key makes concurrent saves of
  one workflow exclusive; clients see it only as an event's number (history,
  the audit log, the bus), never as the workflow's version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.definition import validate_definition
from domain.errors import Problem, WorkflowDeleted, WorkflowInactive, WorkflowInvalid
from domain.meta import EventMeta
from domain.triggers import SECRET_AUTH, activation_problems, webhook_routes


@dataclass(frozen=True)
class ExecutionChain:
    """How a finished run came about, as its workflow's history tells it."""

    trigger: str | None = None
    retry_of: UUID | None = None
    attempt: int | None = None


DEFINITION_FIELDS = ("name", "description", "nodes", "connections", "tags", "settings")


class Workflow(Aggregate):
    """A workflow definition. Its event history is its audit trail."""

    @classmethod
    def create(
        cls,
        *,
        workflow_id: UUID,
        definition: dict[str, Any],
        meta: EventMeta,
        origin: dict[str, Any] | None = None,
    ) -> Workflow:
        """Validate a complete definition and start a new workflow's history.

        ``origin``: where the definition came from (a template and its
        revision, an import); None when a client sent it as it is.
        """
        validate_definition(**_complete(definition))
        return cls(id=workflow_id, **_complete(definition), meta=meta.as_dict(), origin=origin)

    @event("Created")
    def __init__(
        self,
        *,
        id: UUID,
        name: str,
        description: str,
        nodes: list[dict[str, Any]],
        connections: list[dict[str, Any]],
        tags: list[str],
        settings: dict[str, Any],
        meta: dict[str, Any],
        origin: dict[str, Any] | None = None,
    ) -> None:
        # ``origin`` defaults for the Created events recorded before it existed.
        self.org_id: str = meta["org_id"]
        self.origin = origin
        self.name: str = name
        self.description = description
        self.nodes = nodes
        self.connections = connections
        self.tags = tags
        self.settings = settings
        self.created_by: str = meta["actor"]
        self.updated_by: str = meta["actor"]
        self.deleted: bool = False
        self.runs: int = 0
        self.revision: int = 1
        self.active: bool = False
        # When the triggers were last switched on: a schedule fires no
        # instant before it (none from before a pause, either).
        self.activated_at: datetime | None = None

    def definition(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in DEFINITION_FIELDS}

    def update(self, changes: dict[str, Any], meta: EventMeta) -> bool:
        """Apply a partial change; return False (and record nothing) if nothing differs."""
        self.ensure_not_deleted()
        unknown = set(changes) - set(DEFINITION_FIELDS)
        if unknown:
            raise ValueError(f"not definition fields: {sorted(unknown)}")
        changed = {k: v for k, v in changes.items() if getattr(self, k) != v}
        if not changed:
            return False
        validate_definition(**(self.definition() | changed))
        if self.active:
            # Its triggers stay on: the new definition must be activatable too.
            problems = activation_problems(changed.get("nodes", self.nodes))
            if problems:
                raise WorkflowInvalid(problems)
        self._updated(changes=changed, meta=meta.as_dict())
        return True

    @event("Updated")
    def _updated(self, changes: dict[str, Any], meta: dict[str, Any]) -> None:
        for field, value in changes.items():
            setattr(self, field, value)
        self.updated_by = meta["actor"]
        self.revision += 1

    def delete(self, meta: EventMeta) -> None:
        """Mark deleted; the history stays, and no further command is accepted."""
        self.ensure_not_deleted()
        self._deleted(meta=meta.as_dict())

    @event("Deleted")
    def _deleted(self, meta: dict[str, Any]) -> None:
        self.deleted = True
        self.active = False  # a deleted workflow's triggers are gone with it
        self.updated_by = meta["actor"]
        self.revision += 1

    def activate(self, meta: EventMeta) -> bool:
        """Switch the triggers on; return False (and record nothing) if already on.

        Refused (``WorkflowInvalid``) unless the definition has a trigger
        that fires from outside, each with a distinct webhook route. Whether
        another workflow holds a route is the command's to check: it needs
        the organisation's other workflows, which no aggregate sees.
        """
        self.ensure_not_deleted()
        if self.active:
            return False
        problems = activation_problems(self.nodes)
        if problems:
            raise WorkflowInvalid(problems)
        self._activated(meta=meta.as_dict())
        return True

    @event("Activated")
    def _activated(self, meta: dict[str, Any], timestamp: datetime | None = None) -> None:
        # ``timestamp``: the event's own (see ``domain/execution.py``).
        self.active = True
        self.activated_at = timestamp

    def deactivate(self, meta: EventMeta) -> bool:
        """Switch the triggers off; return False (and record nothing) if already off."""
        self.ensure_not_deleted()
        if not self.active:
            return False
        self._deactivated(meta=meta.as_dict())
        return True

    @event("Deactivated")
    def _deactivated(self, meta: dict[str, Any]) -> None:
        self.active = False

    def rotate_webhook_secret(self, node_id: str, meta: EventMeta) -> None:
        """Note that the secret of an active hook is replaced (the secret stays out of the log)."""
        self.ensure_not_deleted()
        if not self.active:
            raise WorkflowInactive(self.id)
        auth = {route.node_id: route.parameters.auth.type for route in webhook_routes(self.nodes)}
        if auth.get(node_id) not in SECRET_AUTH:
            raise WorkflowInvalid(
                [Problem("node_id", f"'{node_id}' is not a webhook_trigger with a token or secret")]
            )
        self._webhook_secret_rotated(node_id=node_id, meta=meta.as_dict())

    @event("WebhookSecretRotated")
    def _webhook_secret_rotated(self, node_id: str, meta: dict[str, Any]) -> None:
        pass  # who rotated which hook's secret, and when: the secret itself is elsewhere

    def record_execution(
        self,
        execution_id: UUID,
        status: str,
        revision: int | None,
        meta: EventMeta,
        *,
        chain: ExecutionChain | None = None,
    ) -> None:
        """Note a finished run of ``revision`` in the workflow's own history.

        Recorded even if the workflow was deleted meanwhile: the run happened.
        ``revision`` is None for a run queued before executions recorded it.
        ``chain``: how the run was triggered, and the retry chain it belongs to.
        A run changes no definition, so the revision stays where it is.
        """
        chain = chain or ExecutionChain()
        self._executed(
            execution_id=str(execution_id),
            status=status,
            revision=revision,
            trigger=chain.trigger,
            retry_of=None if chain.retry_of is None else str(chain.retry_of),
            attempt=chain.attempt,
            meta=meta.as_dict(),
        )

    @event("Executed")
    def _executed(
        self,
        execution_id: str,
        status: str,
        meta: dict[str, Any],
        revision: int | None = None,
        trigger: str | None = None,
        retry_of: str | None = None,
        attempt: int | None = None,
    ) -> None:
        # The defaults are for the Executed events recorded before each existed.
        self.runs += 1

    def __deepcopy__(self, memo: dict[int, Any]) -> Workflow:
        """A copy for one command: its own pending events, the values shared.

        Safe because nothing changes a workflow's values in place: events
        replace whole fields (see ``_updated``) and everything else only
        reads them. Every load from a cache makes such a copy, so a real
        deep copy of every node would cost each command more than its save.
        """
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._pending_events = list(self._pending_events)
        return clone

    def ensure_not_deleted(self) -> None:
        """A deleted workflow accepts no further command."""
        if self.deleted:
            raise WorkflowDeleted(self.id)


def _complete(definition: dict[str, Any]) -> dict[str, Any]:
    """A full definition: optional fields filled with their empty defaults."""
    defaults: dict[str, Any] = {
        "description": "",
        "connections": [],
        "tags": [],
        "settings": {},
    }
    return defaults | definition


# eventsourcing makes the event classes from the @event decorators; they are
# named here for readers of the log (projectors) and for type checkers.
WorkflowCreatedEvent: Any = Workflow.Created  # type: ignore[attr-defined]
WorkflowUpdatedEvent: Any = Workflow.Updated  # type: ignore[attr-defined]
WorkflowDeletedEvent: Any = Workflow.Deleted  # type: ignore[attr-defined]
WorkflowExecutedEvent: Any = Workflow.Executed  # type: ignore[attr-defined]
WorkflowActivatedEvent: Any = Workflow.Activated  # type: ignore[attr-defined]
WorkflowDeactivatedEvent: Any = Workflow.Deactivated  # type: ignore[attr-defined]
WorkflowWebhookSecretRotatedEvent: Any = Workflow.WebhookSecretRotated  # type: ignore[attr-defined]

# The events that move the revision: every definition change, not a run and
# not (de)activation.
REVISION_EVENTS: tuple[Any, ...] = (
    WorkflowCreatedEvent,
    WorkflowUpdatedEvent,
    WorkflowDeletedEvent,
)
