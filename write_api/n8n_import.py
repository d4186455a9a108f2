"""``POST /v1/import/n8n``: create a workflow from an n8n workflow export.

The body is n8n's own JSON (what n8n's "Download" or ``n8n export:workflow``
writes), so it is parsed here rather than by a pydantic model: the answer to
a foreign document is a problem naming what in it cannot be carried over.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from commands import CommandContext, WorkflowCommands
from commands.n8n_import import (
    ExportInvalid,
    ImportRefused,
    LoopRefused,
    import_n8n,
    parse_export,
)
from commands.n8n_import.service import ExportNotJson, ExportTooLarge
from infrastructure.auth import Permission
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type
from infrastructure.tracing import current_traceparent
from infrastructure.web import authorize
from write_api.routes import idempotency_key

router = APIRouter(prefix="/v1")


class UnsupportedNodeAnswer(BaseModel):
    name: str
    type: str
    version: float
    reason: str
    id: str | None = Field(None, description="The placeholder's node id (partial imports).")
    dropped_connections: list[str] | None = Field(
        None, description="n8n connections from the node's other outputs, not kept."
    )


class ImportNote(BaseModel):
    node: str = Field(description="The n8n node's name ('' for the workflow).")
    note: str


class N8nImportAnswer(BaseModel):
    id: str
    version: int
    position: int
    name: str
    placeholders: list[UnsupportedNodeAnswer] = Field(
        description="Nodes that could not be imported (partial=true): placeholders to replace."
    )
    notes: list[ImportNote] = Field(description="What the import changed or could not keep.")
    dropped_sticky_notes: list[str]


_EXPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An n8n workflow export: name, nodes[], connections{}, settings, ...",
    "required": ["nodes"],
    "properties": {
        "name": {"type": "string"},
        "nodes": {
            "type": "array",
            "maxItems": 500,
            "items": {
                "type": "object",
                "required": ["name", "type"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "type": {"type": "string", "minLength": 1},
                    "typeVersion": {"type": "number"},
                    "position": {
                        "type": "array",
                        "items": {"type": "number"},
                        "minItems": 2,
                        "maxItems": 2,
                    },
                    "parameters": {"type": "object"},
                    "disabled": {"type": "boolean"},
                },
            },
        },
        "connections": {"type": "object"},
        "settings": {"type": "object"},
    },
    "examples": [
        {
            "name": "Hello from n8n",
            "nodes": [
                {
                    "name": "Start",
                    "type": "n8n-nodes-base.manualTrigger",
                    "typeVersion": 1,
                    "position": [0, 0],
                    "parameters": {},
                },
                {
                    "name": "Greet",
                    "type": "n8n-nodes-base.set",
                    "typeVersion": 3.4,
                    "position": [200, 0],
                    "parameters": {
                        "assignments": {
                            "assignments": [
                                {"id": "1", "name": "greeting", "value": "hello", "type": "string"}
                            ]
                        },
                        "options": {},
                    },
                },
            ],
            "connections": {"Start": {"main": [[{"node": "Greet", "type": "main", "index": 0}]]}},
        }
    ],
}


@router.post(
    "/import/n8n",
    status_code=201,
    tags=["workflows"],
    summary="Create a workflow from an n8n workflow export",
    description=(
        "Maps n8n's core nodes to ours and its `{{ $json.field }}` expressions to CEL. "
        "A node that cannot be mapped (Code/Function nodes among them) is a 422 listing "
        "every such node, and nothing is created; with `partial=true` each becomes a "
        "placeholder to replace, listed in the answer. A looping export is a 422 naming the cycle."
    ),
    response_model=N8nImportAnswer,
    responses={
        201: {
            "headers": {
                "ETag": {"schema": {"type": "string"}},
                "X-Log-Position": {"schema": {"type": "string"}},
                "Location": {"schema": {"type": "string"}},
            }
        },
        **problems(400, 403, 404, 409, 413, 422),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _EXPORT_SCHEMA}},
        },
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Retry-safe key: the same key and export answers as the first time.",
                "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
            }
        ],
    },
)
async def import_from_n8n(
    request: Request,
    partial: Annotated[
        bool, Query(description="Turn unsupported nodes into placeholders instead of refusing.")
    ] = False,
    project_id: Annotated[UUID | None, Query(description="The project to create it in.")] = None,
) -> Response:
    principal = await authorize(request, Permission.WRITE_WORKFLOWS)
    try:
        document = parse_export(await request.body())
    except ExportTooLarge as exc:
        raise Problem(413, str(exc), type_=problem_type("n8n-export-too-large")) from None
    except ExportNotJson as exc:
        raise Problem(400, str(exc), type_=problem_type("malformed-json")) from None
    context = CommandContext(
        org_id=principal.org_id,
        actor=principal.actor,
        correlation_id=request.state.request_id,
        idempotency_key=idempotency_key(request),
        traceparent=current_traceparent(),
        project_id=principal.project_id,
    )
    commands: WorkflowCommands = request.app.state.workflow_commands
    try:
        answer = await run_in_threadpool(
            import_n8n,
            commands,
            document,
            context,
            partial=partial,
            project_id=project_id,
        )
    except ExportInvalid as exc:
        raise Problem(
            422,
            f"not an n8n workflow export: {exc}",
            type_=problem_type("not-an-n8n-export"),
            errors=exc.problems,
        ) from None
    except LoopRefused as exc:
        raise Problem(
            422, str(exc), type_=problem_type("n8n-import-loop"), cycle=exc.cycle
        ) from None
    except ImportRefused as exc:
        raise Problem(
            422,
            str(exc),
            type_=problem_type("n8n-import-unsupported"),
            nodes=[node.as_json() for node in exc.nodes],
        ) from None
    result = answer.result
    return Response(
        orjson.dumps(answer.as_json()),
        status_code=result.status_code,
        headers={
            "ETag": f'"{result.version}"',
            "X-Log-Position": str(result.position),
            "Location": f"/v1/workflows/{result.workflow_id}",
        },
        media_type="application/json",
    )
