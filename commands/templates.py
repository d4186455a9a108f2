"""Templates and our own import: commands that make workflows from something else.

- ``publish``: freeze a workflow revision as a ``Template`` (owners), with
  its declared parameters.
- ``unpublish``: no new workflows from it; the ones it made stay as they are.
- ``instantiate``: a new workflow from a template visible to the caller (its
  own organisation's, or a public one), the parameters substituted; its
  ``Created`` event records the template and the revision it came from.
- ``import_workflow``: a new workflow from our export document
  (``domain/transfer.py``).

The catalogue the read API lists (table ``templates``) is written in the same
transaction as each Template event (``SideStatement``), so what a publish
answered is listed at once and an unpublished template is never listed.
Publishing and unpublishing take no ``Idempotency-Key``: an unpublish repeats
harmlessly, and a repeated publish makes a second template.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic
from pydantic import BaseModel, ConfigDict, Field

from commands.application import WorkflowApplication
from commands.handlers import WorkflowCommands, _meta
from commands.models import CommandContext, CommandResult, CreateWorkflow, JsonInt
from commands.projects import ProjectScopeRefused
from domain.definition import MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS
from domain.errors import DomainError, WorkflowInvalid
from domain.template import (
    MAX_PARAMETERS,
    Template,
    TemplateNotVisible,
    TemplateParametersInvalid,
    TemplatePublishedEvent,
    TemplateUnpublishedEvent,
    blame,
)
from domain.transfer import FORMAT
from infrastructure.eventstore import EVENTS_TABLE, SideStatement, decode_event

MAX_REVISION = 2**63 - 1  # what the log's integers hold

# The project the new workflow goes to; None: the key's project, or the default one.
ProjectId = Annotated[UUID | None, Field(None)]


class PublishTemplate(BaseModel):
    """Publish one revision of a workflow as a template."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "workflow_id": "0b6f0c1e-6a57-4a55-9d0e-2f1d1f0f6d4b",
                    "version": 3,
                    "visibility": "organisation",
                    "parameters": [
                        {"name": "greeting", "type": "string", "default": "hello"},
                        {"name": "limit", "type": "integer", "required": True},
                    ],
                }
            ]
        },
    )

    workflow_id: UUID
    version: JsonInt | None = Field(
        None,
        le=MAX_REVISION,
        ge=1,
        description="The workflow's version (revision) to publish; its latest if left out.",
    )
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS)
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARS)
    visibility: Literal["organisation", "public"] = Field(
        "organisation", description="``public``: every organisation may list and instantiate it."
    )
    parameters: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=MAX_PARAMETERS,
        description="Declarations {name, type (string, number, integer, boolean, object, "
        "array), default?, required?, description?}; the definition refers to each as "
        "{{ params.<name> }} inside its strings.",
    )


class InstantiateTemplate(BaseModel):
    """Make a new workflow from a template."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"name": "Nightly report", "parameters": {"limit": 10}}]},
    )

    name: str | None = Field(
        None, min_length=1, max_length=MAX_NAME_CHARS, description="Else the template's."
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="A value for each parameter without a default."
    )
    project_id: ProjectId


class ImportWorkflow(BaseModel):
    """Our export document (``GET /v1/workflows/{id}/export``), unchanged."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["reporunner.workflow"] = Field(description="Always reporunner.workflow.")
    format_version: Literal[1] = Field(description="The versions this service reads: 1.")
    workflow: CreateWorkflow
    exported: dict[str, Any] | None = Field(
        None, description="Where and when it was exported: informational, not imported."
    )


@dataclass(frozen=True)
class TemplateResult:
    template_id: UUID
    version: int
    position: int
    status_code: int


class TemplateNotOwned(DomainError):
    """Another organisation's public template: visible, not theirs to unpublish."""

    def __init__(self, template_id: UUID) -> None:
        self.template_id = template_id
        super().__init__(f"template {template_id} belongs to another organisation")


class TemplateCommands:
    """The write side's use cases for templates and imports."""

    def __init__(self, workflows: WorkflowCommands) -> None:
        self.workflows = workflows
        self.app = workflows.app

    def publish(self, command: PublishTemplate, ctx: CommandContext) -> TemplateResult:
        if ctx.project_id is not None:
            # Publishing shows a workflow to every project (or organisation).
            raise ProjectScopeRefused("publish templates")
        workflow = self.workflows.get(command.workflow_id, ctx.org_id, revision=command.version)
        if command.version is None:
            workflow.ensure_not_deleted()  # an earlier version of it may still be published
        template = Template.publish(
            template_id=uuid.uuid4(),
            name=command.name or workflow.name,
            description=workflow.description
            if command.description is None
            else command.description,
            visibility=command.visibility,
            parameters=command.parameters,
            definition=workflow.definition(),
            source_workflow_id=workflow.id,
            source_revision=workflow.revision,
            meta=_meta(ctx),
        )
        recordings = self.app.save(template, side_statements=[_catalogue_insert(template)])
        return TemplateResult(template.id, template.version, recordings[-1].notification.id, 201)

    def unpublish(self, template_id: UUID, ctx: CommandContext) -> TemplateResult:
        if ctx.project_id is not None:
            raise ProjectScopeRefused("unpublish templates")
        for _ in range(2):  # a racing unpublish wins at most once
            template = self.get(template_id, ctx.org_id)
            if template.org_id != ctx.org_id:
                raise TemplateNotOwned(template_id)
            if not template.unpublish(_meta(ctx)):
                position = self.app.event_store.position_of(template.id, template.version)
                return TemplateResult(template.id, template.version, position, 200)
            statement = SideStatement(
                "UPDATE templates SET unpublished_at = %s WHERE template_id = %s",
                (template.modified_on, template.id),
            )
            try:
                recordings = self.app.save(template, side_statements=[statement])
            except IntegrityError:
                continue
            return TemplateResult(
                template.id, template.version, recordings[-1].notification.id, 200
            )
        raise AssertionError("unreachable: the second read sees the template unpublished")

    def instantiate(
        self, template_id: UUID, command: InstantiateTemplate, ctx: CommandContext
    ) -> CommandResult:
        template = self.get(template_id, ctx.org_id)
        definition = template.instantiate(command.parameters)
        if command.name is not None:
            definition["name"] = command.name
        origin = {
            "kind": "template",
            "template_id": str(template.id),
            "template_version": template.version,
            "workflow_id": template.source["workflow_id"],
            "revision": template.source["revision"],
        }
        try:
            return self._create(
                CreateWorkflow.model_validate(definition), ctx, origin, command.project_id
            )
        except WorkflowInvalid as exc:
            # What a value broke is named by its parameter (422 naming each).
            raise TemplateParametersInvalid(blame(exc.problems, template.definition)) from None

    def import_workflow(
        self, command: ImportWorkflow, ctx: CommandContext, project_id: UUID | None = None
    ) -> CommandResult:
        origin = {"kind": "import", "format": FORMAT, "format_version": command.format_version}
        return self._create(command.workflow, ctx, origin, project_id)

    def get(self, template_id: UUID, org_id: str) -> Template:
        """The template if ``org_id`` may see it (its own, or a public one); else not found."""
        try:
            template: object = self.app.repository.get(template_id)
        except AggregateNotFoundError:
            raise TemplateNotVisible(template_id) from None
        if not isinstance(template, Template):
            raise TemplateNotVisible(template_id)
        template.ensure_visible_to(org_id)
        return template

    def _create(
        self,
        command: CreateWorkflow,
        ctx: CommandContext,
        origin: dict[str, Any],
        project_id: UUID | None,
    ) -> CommandResult:
        if project_id is not None:
            command = command.model_copy(update={"project_id": project_id})
        return self.workflows.create(command, ctx, origin=origin)


# Reading the log for a rebuild, a page of template events at a time.
_REBUILD_PAGE = 500


def rebuild_catalogue(app: WorkflowApplication) -> int:
    """Rewrite the ``templates`` table from the log's Template events; how many templates.

    The table is derived, like every view: this is how it is checked or
    restored. One transaction, so readers see the old catalogue or the new.
    """
    topics = [get_topic(TemplatePublishedEvent), get_topic(TemplateUnpublishedEvent)]
    templates: dict[UUID, Template] = {}
    after = 0
    with app.event_store.datastore.get_connection() as conn:
        while True:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT notification_id, originator_id, originator_version, topic, state "
                    f"FROM {EVENTS_TABLE} WHERE notification_id > %s AND topic = ANY(%s) "
                    "ORDER BY notification_id LIMIT %s",
                    (after, topics, _REBUILD_PAGE),
                )
                rows = cur.fetchall()
            for row in rows:
                after = int(row["notification_id"])
                event = decode_event(
                    app.mapper,
                    row["originator_id"],
                    row["originator_version"],
                    row["topic"],
                    row["state"],
                )
                templates[event.originator_id] = event.mutate(templates.get(event.originator_id))
            if len(rows) < _REBUILD_PAGE:
                break
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("DELETE FROM templates")
            for template in templates.values():
                insert = _catalogue_insert(template)
                cur.execute(insert.sql, insert.params)
                if template.unpublished:
                    cur.execute(
                        "UPDATE templates SET unpublished_at = %s WHERE template_id = %s",
                        (template.modified_on, template.id),
                    )
    return len(templates)


def template_summary(template: Template) -> dict[str, Any]:
    """What the catalogue lists of a template (everything but its definition)."""
    return {
        "id": str(template.id),
        "org_id": template.org_id,
        "name": template.name,
        "description": template.description,
        "visibility": template.visibility,
        "parameters": template.parameters,
        "source": template.source,
        "published_at": template.created_on.isoformat(),
        "published_by": template.published_by,
    }


def _catalogue_insert(template: Template) -> SideStatement:
    return SideStatement(
        "INSERT INTO templates (template_id, org_id, visibility, name, description, summary, "
        "definition, published_at) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s)",
        (
            template.id,
            template.org_id,
            template.visibility,
            template.name,
            template.description,
            _json(template_summary(template)),
            _json(template.definition),
            template.created_on,
        ),
    )


def _json(value: Any) -> str:
    # The definition passed the value contract when its workflow was saved.
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
