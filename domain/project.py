"""The Project aggregate: a named group of one organisation's workflows.

Every organisation has a default project whose id is derived from the
organisation (``default_project_id``): it exists without any event, so the
workflows created before projects (their ``Created`` events carry no
project) belong to it on every replay, and nothing had to be migrated in the
log. Renaming it records its first events under that same id.

A project is archived, not deleted: its workflows and their history stay
where they are, but no workflow is created in it or moved into it.
"""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError
from domain.meta import EventMeta

_DEFAULT_PROJECT_NAMESPACE = uuid.UUID("2b6f4d1e-8c3a-4f57-a1d9-0e7c5b3a9f42")
DEFAULT_PROJECT_NAME = "Default"
MAX_PROJECT_NAME_CHARS = 200
MAX_PROJECT_DESCRIPTION_CHARS = 2000

# What a share grants the other project on one workflow.
SHARE_ROLES = ("viewer", "editor")


def default_project_id(org_id: str) -> UUID:
    """The id of ``org_id``'s default project: the same in every process, on every replay."""
    return uuid.uuid5(_DEFAULT_PROJECT_NAMESPACE, org_id)


class ProjectArchived(DomainError):
    """An archived project takes no new workflow and no further change."""

    def __init__(self, project_id: UUID | str) -> None:
        self.project_id = project_id
        super().__init__(f"project {project_id} is archived")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.project_id,))


class DefaultProjectPermanent(DomainError):
    """The default project holds every workflow that names no project: it stays."""

    def __init__(self, project_id: UUID | str) -> None:
        self.project_id = project_id
        super().__init__(
            f"project {project_id} is the organisation's default: it cannot be archived"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.project_id,))


class Project(Aggregate):
    """A project of one organisation. Its events are its audit trail."""

    @classmethod
    def create(cls, *, project_id: UUID, name: str, description: str, meta: EventMeta) -> Project:
        return cls(id=project_id, name=name, description=description, meta=meta.as_dict())

    @event("Created")
    def __init__(self, *, id: UUID, name: str, description: str, meta: dict[str, Any]) -> None:
        self.org_id: str = meta["org_id"]
        self.name = name
        self.description = description
        self.archived = False
        self.created_by: str = meta["actor"]
        self.updated_by: str = meta["actor"]

    def rename(self, name: str | None, description: str | None, meta: EventMeta) -> bool:
        """Change the name and/or description; False (nothing recorded) if nothing differs."""
        self.ensure_not_archived()
        changes: dict[str, str] = {}
        if name is not None and name != self.name:
            changes["name"] = name
        if description is not None and description != self.description:
            changes["description"] = description
        if not changes:
            return False
        self._renamed(changes=changes, meta=meta.as_dict())
        return True

    @event("Renamed")
    def _renamed(self, changes: dict[str, str], meta: dict[str, Any]) -> None:
        for field, value in changes.items():
            setattr(self, field, value)
        self.updated_by = meta["actor"]

    def archive(self, meta: EventMeta) -> bool:
        """Archive; False if it already is. The default project cannot be archived."""
        if self.archived:
            return False
        if self.id == default_project_id(self.org_id):
            raise DefaultProjectPermanent(self.id)
        self._archived(meta=meta.as_dict())
        return True

    @event("Archived")
    def _archived(self, meta: dict[str, Any]) -> None:
        self.archived = True
        self.updated_by = meta["actor"]

    def ensure_not_archived(self) -> None:
        if self.archived:
            raise ProjectArchived(self.id)


ProjectCreatedEvent: Any = Project.Created  # type: ignore[attr-defined]
ProjectRenamedEvent: Any = Project.Renamed  # type: ignore[attr-defined]
ProjectArchivedEvent: Any = Project.Archived  # type: ignore[attr-defined]
