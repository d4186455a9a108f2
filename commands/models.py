"""Command models: what a client may ask the write side to do.

They check types and shape only; the rules of a valid workflow live in
``domain`` and run inside the aggregate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from domain.definition import (
    MAX_CONNECTIONS,
    MAX_DESCRIPTION_CHARS,
    MAX_NAME_CHARS,
    MAX_NODES,
    MAX_TAG_CHARS,
    MAX_TAGS,
)

_EXAMPLE_NODES: list[Any] = [
    {"id": "start", "type": "manual_trigger", "parameters": {}},
    {
        "id": "greet",
        "type": "set",
        "parameters": {"fields": {"greeting": "hello"}, "keep_others": True},
    },
]
_EXAMPLE_CONNECTIONS: list[Any] = [{"from": "start", "to": "greet"}]

# The definition's limits, for the OpenAPI document only: the domain checks them
# (domain/definition.py) and names every problem in one 422.
_NAME: Any = {"maxLength": MAX_NAME_CHARS, "pattern": r"\S"}
_DESCRIPTION: Any = {"maxLength": MAX_DESCRIPTION_CHARS}
_NODES: Any = {"minItems": 1, "maxItems": MAX_NODES}
_CONNECTIONS: Any = {"maxItems": MAX_CONNECTIONS}
_TAGS: Any = {
    "maxItems": MAX_TAGS,
    "uniqueItems": True,
    "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_CHARS},
}


def _integral(value: Any) -> Any:
    """JSON's 3.0 is the integer 3 (JSON Schema says so), which strict mode would refuse."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]


def _present_fields_not_null(schema: dict[str, Any]) -> None:
    """A partial update's fields may be left out, never sent as null: say so."""
    for prop in schema["properties"].values():
        options = [option for option in prop.pop("anyOf", []) if option.get("type") != "null"]
        if options:
            prop.update(options[0])
        prop.pop("default", None)
    schema["minProperties"] = 1
    schema["examples"] = [{"name": "Say hello politely", "tags": ["demo", "v2"]}]


class CreateWorkflow(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "Say hello",
                    "description": "Adds a greeting to every item",
                    "nodes": _EXAMPLE_NODES,
                    "connections": _EXAMPLE_CONNECTIONS,
                    "tags": ["demo"],
                    "settings": {"timeout_ms": 30000},
                }
            ]
        },
    )

    name: str = Field(json_schema_extra=_NAME)
    description: str = Field("", json_schema_extra=_DESCRIPTION)
    nodes: list[dict[str, Any]] = Field(json_schema_extra=_NODES)
    connections: list[dict[str, Any]] = Field(default_factory=list, json_schema_extra=_CONNECTIONS)
    tags: list[str] = Field(default_factory=list, json_schema_extra=_TAGS)
    settings: dict[str, Any] = Field(default_factory=dict)
    project_id: UUID | None = Field(
        None,
        description="The project to create it in; default: the key's project, "
        "or the organisation's default project for an organisation-wide key.",
    )

    def definition(self) -> dict[str, Any]:
        return self.model_dump(exclude={"project_id"})


class UpdateWorkflow(BaseModel):
    """A partial update: only the fields present change."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_present_fields_not_null,
    )

    name: str | None = Field(None, json_schema_extra=_NAME)
    description: str | None = Field(None, json_schema_extra=_DESCRIPTION)
    nodes: list[dict[str, Any]] | None = Field(None, json_schema_extra=_NODES)
    connections: list[dict[str, Any]] | None = Field(None, json_schema_extra=_CONNECTIONS)
    tags: list[str] | None = Field(None, json_schema_extra=_TAGS)
    settings: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _present_and_not_null(self) -> UpdateWorkflow:
        if not self.model_fields_set:
            raise ValueError("give at least one of: " + ", ".join(type(self).model_fields))
        nulls = sorted(f for f in self.model_fields_set if getattr(self, f) is None)
        if nulls:
            raise ValueError(f"may not be null: {', '.join(nulls)}")
        return self

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class RevertWorkflow(BaseModel):
    """Restore the whole definition a workflow had at version (revision) ``to_version``."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"to_version": 3}]}
    )

    to_version: JsonInt = Field(ge=1)


class MoveWorkflow(BaseModel):
    """Move a workflow to another project of its organisation."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"project_id": "0b6f0c52-6d4e-4f4b-9c57-3f0ac1d7e9a1"}]},
    )

    project_id: UUID


class ShareWorkflow(BaseModel):
    """Grant another project of the organisation a role on one workflow."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"project_id": "0b6f0c52-6d4e-4f4b-9c57-3f0ac1d7e9a1", "role": "viewer"}]
        },
    )

    project_id: UUID
    role: Literal["viewer", "editor"]


class RotateWebhookSecret(BaseModel):
    """Replace the token or HMAC secret of one webhook_trigger node of an active workflow."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"node_id": "hook"}]}
    )

    node_id: str = Field(min_length=1, max_length=200)


@dataclass(frozen=True)
class CommandContext:
    """Who sends a command, and the request it came in."""

    org_id: str
    actor: str
    correlation_id: str
    idempotency_key: str | None = None
    # The W3C trace context of the request (None when tracing is off), for the events' metadata.
    traceparent: str | None = None
    # What a keyed request is told apart by, when not by its whole content
    # (a webhook delivery is the same one by its dedupe key, whatever its bytes).
    request_fingerprint: str | None = None
    # The project the caller's key is confined to (None: the whole organisation):
    # outside it a workflow is not found, as another organisation's is.
    project_id: UUID | None = None


@dataclass(frozen=True)
class CommandResult:
    workflow_id: UUID
    version: int  # the definition's revision: what the ETag and the next If-Match carry
    position: int
    status_code: int
    # The secrets this activation generated for its hooks, by node id (a
    # header_token's token, an hmac_sha256's key): in this answer only.
    webhook_secrets: dict[str, str] = field(default_factory=dict)


class RunWorkflow(BaseModel):
    """Run a workflow: ``sync`` answers with the result, ``async`` queues it for a worker."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"input": {"name": "Ada"}, "mode": "sync"}]},
    )

    input: dict[str, Any] | list[dict[str, Any]] = Field(
        default_factory=dict,
        description="An object (one item) or an array of objects (one item each).",
    )
    mode: Literal["sync", "async"] = "sync"


RetryFrom = Literal["start", "failed_node"]
RetryRevision = Literal["original", "current"]


class RetryExecution(BaseModel):
    """Retry a finished execution that did not succeed, as a new execution over its input."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        populate_by_name=True,
        json_schema_extra={
            "examples": [{"from": "failed_node", "revision": "original"}],
            # What _same_graph_for_failed_node refuses.
            "not": {
                "required": ["from", "revision"],
                "properties": {"from": {"const": "failed_node"}, "revision": {"const": "current"}},
            },
        },
    )

    from_: RetryFrom = Field(
        "start",
        alias="from",
        description="``start`` runs every node again; ``failed_node`` reuses the recorded "
        "outputs of the nodes that succeeded and runs the rest.",
    )
    revision: RetryRevision = Field(
        "original",
        description="Run the workflow as the retried execution ran it, or as it is now.",
    )
    mode: Literal["sync", "async"] = "async"

    @model_validator(mode="after")
    def _same_graph_for_failed_node(self) -> RetryExecution:
        if self.from_ == "failed_node" and self.revision == "current":
            raise ValueError(
                'from "failed_node" reuses outputs of the original revision\'s nodes: '
                'it needs revision "original" (or retry from "start")'
            )
        return self


@dataclass(frozen=True)
class ExecutionResult:
    """An execution as a command answers it."""

    execution_id: UUID
    status: str
    position: int
    status_code: int
    output: dict[str, Any] | None = None
    # A message, or {"$erased": true} (commands/payloads.py).
    error: str | dict[str, Any] | None = None
