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
from domain.project import SHARE_ROLES, default_project_id
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

    # 2: ``project_id``, ``shares`` and ``origin`` (snapshots taken before them are upcast).
    class_version = 2

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["project_id"] = str(default_project_id(state["org_id"]))
        state["shares"] = {}
        state.setdefault("origin", None)

    @classmethod
    def create(
        cls,
        *,
        workflow_id: UUID,
        definition: dict[str, Any],
        meta: EventMeta,
        origin: dict[str, Any] | None = None,
        project_id: UUID | None = None,
    ) -> Workflow:
        """Validate a complete definition and start a new workflow's history.

        ``origin``: where the definition came from (a template and its
        revision, an import); None when a client sent it as it is.
        ``project_id`` None: the organisation's default project (recorded as
        no project, as every workflow from before projects was).
        """
        validate_definition(**_complete(definition))
        project = None
        if project_id is not None and project_id != default_project_id(meta.org_id):
            project = str(project_id)
        return cls(
            id=workflow_id,
            **_complete(definition),
            meta=meta.as_dict(),
            origin=origin,
            project_id=project,
        )

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
        project_id: str | None = None,
    ) -> None:
        # ``origin`` and ``project_id`` default for the Created events recorded
        # before they existed.
        self.org_id: str = meta["org_id"]
        self.origin = origin
        self.project_id: str = project_id or str(default_project_id(self.org_id))
        # Other projects' grants on this workflow: project id -> "viewer" | "editor".
        self.shares: dict[str, str] = {}
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

    def move(self, project_id: UUID, meta: EventMeta) -> bool:
        """Move to another project of the organisation; False if it is there already.

        A share with the destination ends with the move (the project owns it now).
        """
        self.ensure_not_deleted()
        if str(project_id) == self.project_id:
            return False
        self._moved(
            project_id=str(project_id), from_project_id=self.project_id, meta=meta.as_dict()
        )
        return True

    @event("Moved")
    def _moved(self, project_id: str, from_project_id: str, meta: dict[str, Any]) -> None:
        self.project_id = project_id
        self.shares = {p: r for p, r in self.shares.items() if p != project_id}

    def share(self, project_id: UUID, role: str, meta: EventMeta) -> bool:
        """Grant another project ``role`` on this workflow; False if it holds exactly that."""
        self.ensure_not_deleted()
        if role not in SHARE_ROLES:
            raise ValueError(f"share role must be one of {SHARE_ROLES}, not {role!r}")
        if str(project_id) == self.project_id:
            raise WorkflowInvalid(
                [Problem("project_id", "the workflow's own project needs no share")]
            )
        if self.shares.get(str(project_id)) == role:
            return False
        self._shared(project_id=str(project_id), role=role, meta=meta.as_dict())
        return True

    @event("Shared")
    def _shared(self, project_id: str, role: str, meta: dict[str, Any]) -> None:
        self.shares = {**self.shares, project_id: role}

    def unshare(self, project_id: UUID, meta: EventMeta) -> bool:
        """Revoke a project's grant; False if it holds none."""
        self.ensure_not_deleted()
        if str(project_id) not in self.shares:
            return False
        self._unshared(project_id=str(project_id), meta=meta.as_dict())
        return True

    @event("Unshared")
    def _unshared(self, project_id: str, meta: dict[str, Any]) -> None:
        self.shares = {p: r for p, r in self.shares.items() if p != project_id}

    def role_of(self, project_id: UUID | str) -> str | None:
        """What a key of ``project_id`` may do here: "owner" (its own), a share's role, or None."""
        if str(project_id) == self.project_id:
            return "owner"
        return self.shares.get(str(project_id))

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
WorkflowMovedEvent: Any = Workflow.Moved  # type: ignore[attr-defined]
WorkflowSharedEvent: Any = Workflow.Shared  # type: ignore[attr-defined]
WorkflowUnsharedEvent: Any = Workflow.Unshared  # type: ignore[attr-defined]

# The events that move the revision: every definition change, not a run and
# not (de)activation.
REVISION_EVENTS: tuple[Any, ...] = (
    WorkflowCreatedEvent,
    WorkflowUpdatedEvent,
    WorkflowDeletedEvent,
)
