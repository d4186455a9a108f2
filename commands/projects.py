"""Project commands: create, rename, archive; and the projects a workflow may name.

Each save also rewrites the project's row in ``projects`` in the same
transaction (``_row_statement``), so the list is exactly what the log says.
The default project needs no event to exist (``domain/project.py``); its
first rename records its ``Created`` under its fixed id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from commands.application import WorkflowApplication
from commands.errors import CommandError, IdempotencyKeyReused, VersionConflict
from commands.models import CommandContext
from domain.meta import EventMeta
from domain.project import (
    DEFAULT_PROJECT_NAME,
    MAX_PROJECT_DESCRIPTION_CHARS,
    MAX_PROJECT_NAME_CHARS,
    Project,
    default_project_id,
)
from domain.values import StorableText
from infrastructure.eventstore import SideStatement

_NAME: Any = {"pattern": r"\S"}


class CreateProject(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"name": "Billing"}]}
    )

    name: StorableText = Field(
        min_length=1, max_length=MAX_PROJECT_NAME_CHARS, json_schema_extra=_NAME
    )
    description: StorableText = Field("", max_length=MAX_PROJECT_DESCRIPTION_CHARS)

    @model_validator(mode="after")
    def _named(self) -> CreateProject:
        if not self.name.strip():
            raise ValueError("name: must not be blank")
        return self


class UpdateProject(BaseModel):
    """Rename, describe or archive a project (only the fields present change)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"name": "Billing (EU)"}, {"archived": True}],
            "minProperties": 1,
        },
    )

    name: StorableText | None = Field(
        None, min_length=1, max_length=MAX_PROJECT_NAME_CHARS, json_schema_extra=_NAME
    )
    description: StorableText | None = Field(None, max_length=MAX_PROJECT_DESCRIPTION_CHARS)
    archived: bool | None = Field(
        None, description="true archives it; there is no way back (false on an archived one: 409)."
    )

    @model_validator(mode="after")
    def _something(self) -> UpdateProject:
        if not self.model_fields_set:
            raise ValueError("give at least one of: name, description, archived")
        if self.name is not None and not self.name.strip():
            raise ValueError("name: must not be blank")
        return self


class ProjectVersionConflict(VersionConflict):
    """The client's expected project version is not the current one."""

    def __init__(self, project_id: UUID, expected: int, current: int) -> None:
        super().__init__(project_id, expected, current)
        self.args = (f"project {project_id} is at version {current}, not the expected {expected}",)


class ProjectNotFound(CommandError):
    """No such project in the caller's organisation (or outside the key's project)."""

    def __init__(self, project_id: UUID) -> None:
        super().__init__(f"project {project_id} not found")
        self.project_id = project_id


@dataclass(frozen=True)
class ProjectResult:
    project_id: UUID
    version: int
    position: int | None
    status_code: int


def load_project(app: WorkflowApplication, project_id: UUID, org_id: str) -> Project | None:
    """The project's aggregate; None for the default project before its first event.

    ``ProjectNotFound`` for any other id without a project of ``org_id``.
    """
    try:
        project: object = app.repository.get(project_id)
    except AggregateNotFoundError:
        project = None
    if isinstance(project, Project) and project.org_id == org_id:
        return project
    if project is None and project_id == default_project_id(org_id):
        return None
    raise ProjectNotFound(project_id)


class ProjectCommands:
    def __init__(self, app: WorkflowApplication) -> None:
        self.app = app

    def create(self, command: CreateProject, ctx: CommandContext) -> ProjectResult:
        if ctx.project_id is not None:
            # A project's key works inside its project; making projects is the organisation's.
            raise ProjectScopeRefused("create projects")
        meta = _meta(ctx)
        if ctx.idempotency_key is not None:
            project_id = uuid.uuid5(uuid.uuid5(_PROJECT_NS, ctx.org_id), ctx.idempotency_key)
        else:
            project_id = uuid.uuid4()
        project = Project.create(
            project_id=project_id, name=command.name, description=command.description, meta=meta
        )
        try:
            return self._save(project, 201)
        except IntegrityError:
            # The same key again: answer the project it made, if it made it of this request.
            then: object = self.app.repository.get(project_id, version=1)
            if not (
                isinstance(then, Project)
                and then.org_id == ctx.org_id
                and (then.name, then.description) == (command.name, command.description)
            ):
                raise IdempotencyKeyReused(ctx.idempotency_key or "") from None
            current = load_project(self.app, project_id, ctx.org_id)
            assert current is not None
            return ProjectResult(current.id, current.version, None, 201)

    def update(
        self,
        project_id: UUID,
        command: UpdateProject,
        expected_version: int,
        ctx: CommandContext,
    ) -> ProjectResult:
        """Rename, describe or archive, if the project is at ``expected_version`` (If-Match).

        The default project is at version 0 until its first change.
        """
        if ctx.project_id is not None and ctx.project_id != project_id:
            raise ProjectNotFound(project_id)
        meta = _meta(ctx)
        project = load_project(self.app, project_id, ctx.org_id)
        current = 0 if project is None else project.version
        if current != expected_version:
            raise ProjectVersionConflict(project_id, expected_version, current)
        if project is None:  # the default project's first event
            project = Project.create(
                project_id=project_id, name=DEFAULT_PROJECT_NAME, description="", meta=meta
            )
        if command.archived is False:
            project.ensure_not_archived()  # an archived project stays archived
        project.rename(command.name, command.description, meta)
        if command.archived:
            project.archive(meta)
        if not project.pending_events:
            return ProjectResult(project.id, project.version, None, 200)
        try:
            return self._save(project, 200)
        except IntegrityError:
            latest = load_project(self.app, project_id, ctx.org_id)
            raise ProjectVersionConflict(
                project_id, expected_version, 0 if latest is None else latest.version
            ) from None

    def _save(self, project: Project, status_code: int) -> ProjectResult:
        recordings = self.app.save(project, side_statements=[_row_statement(project)])
        return ProjectResult(
            project.id, project.version, recordings[-1].notification.id, status_code
        )


class ProjectScopeRefused(CommandError):
    """What only an organisation-wide key may do."""

    def __init__(self, what: str) -> None:
        super().__init__(f"a project-scoped key may not {what}: use an organisation-wide key")


_PROJECT_NS = uuid.UUID("9d0e7a3c-51b4-4f2e-8a6d-3c7b1e5f0a24")


def _row_statement(project: Project) -> SideStatement:
    return SideStatement(
        "INSERT INTO projects (id, org_id, name, description, archived, version, "
        "created_at, created_by, updated_at, updated_by) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
        "name = excluded.name, description = excluded.description, "
        "archived = excluded.archived, version = excluded.version, "
        "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        (
            project.id,
            project.org_id,
            project.name,
            project.description,
            project.archived,
            project.version,
            project.created_on,
            project.created_by,
            project.modified_on,
            project.updated_by,
        ),
    )


def _meta(ctx: CommandContext) -> EventMeta:
    return EventMeta(
        org_id=ctx.org_id,
        actor=ctx.actor,
        correlation_id=ctx.correlation_id,
        idempotency_key=ctx.idempotency_key,
        traceparent=ctx.traceparent,
    )
