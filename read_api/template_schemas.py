"""What the template and export queries answer, as OpenAPI response models (never used to
serialise: the routes answer raw JSON)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

_OPEN = ConfigDict(extra="allow")


class TemplateParameter(BaseModel):
    model_config = _OPEN

    name: str
    type: Literal["string", "number", "integer", "boolean", "object", "array"]
    required: bool
    description: str
    default: Any = Field(None, description="Present only when the parameter has a default.")


class TemplateSummary(BaseModel):
    model_config = _OPEN

    id: UUID
    org_id: str = Field(description="The organisation that published it.")
    name: str
    description: str
    visibility: Literal["organisation", "public"]
    parameters: list[TemplateParameter]
    source: dict[str, Any] = Field(description="{workflow_id, revision} it was published from.")
    published_at: datetime
    published_by: str


class TemplateDocument(TemplateSummary):
    definition: dict[str, Any] = Field(
        description="The published definition, with its {{ params.<name> }} placeholders."
    )


class TemplatePage(BaseModel):
    items: list[TemplateSummary]
    next_cursor: str | None


class ExportedFrom(BaseModel):
    workflow_id: UUID
    version: int
    at: datetime


class ExportDocument(BaseModel):
    """Our export format (``domain/transfer.py``): what ``POST /v1/import`` takes back."""

    format: Literal["reporunner.workflow"]
    format_version: Literal[1]
    workflow: dict[str, Any] = Field(
        description="The definition: name, description, nodes, connections, tags, settings."
    )
    exported: ExportedFrom = Field(description="Informational: not imported.")
