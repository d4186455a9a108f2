"""Query endpoints for projects, and for who a workflow is shared with.

Projects are read from ``projects`` (written with each project event, see
``commands/projects.py``), plus the organisation's default project, which
every list answers first even before it has an event (version 0). A key
confined to a project sees that project only; any other is not found.

A workflow's shares come from its document in the workflows view, as every
key that sees the workflow sees them there (its ``project_id`` and ``shares``
are part of the workflow, as its name is).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from starlette.responses import Response

from domain.project import DEFAULT_PROJECT_NAME, default_project_id
from infrastructure.auth import Permission, Principal
from infrastructure.json_codec import dumps_answer
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type
from infrastructure.web import authorize
from projections.workflows import WORKFLOWS
from read_api.params import CursorKey, decode_cursor, encode_cursor
from read_api.queries import get_document
from read_api.routes import PROJECTION_HEADERS, Cursor, Limit, MinPosition, _views_position

router = APIRouter(prefix="/v1", tags=["projects"])

_OPEN = ConfigDict(extra="allow")
# A cursor after the default project (which always comes first): before any real row.
_EPOCH = "1970-01-01T00:00:00+00:00"


class ProjectDocument(BaseModel):
    model_config = _OPEN

    id: UUID
    name: str
    description: str
    archived: bool
    default: bool = Field(description="The organisation's default project.")
    version: int = Field(ge=0, description="0: the default project before its first change.")
    created_at: datetime | None
    created_by: str | None
    updated_at: datetime | None
    updated_by: str | None


class ProjectPage(BaseModel):
    items: list[ProjectDocument]
    next_cursor: str | None = Field(description="The next page's cursor; null at the end.")


class ShareDocument(BaseModel):
    project_id: UUID
    role: str = Field(examples=["viewer", "editor"])


class SharesAnswer(BaseModel):
    workflow_id: UUID
    project_id: UUID = Field(description="The project that holds the workflow.")
    items: list[ShareDocument]


def _document(row: Any, org_id: str) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "name": row.name,
        "description": row.description,
        "archived": row.archived,
        "default": row.id == default_project_id(org_id),
        "version": row.version,
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
        "updated_at": row.updated_at.isoformat(),
        "updated_by": row.updated_by,
    }


def _virgin_default(org_id: str) -> dict[str, Any]:
    return {
        "id": str(default_project_id(org_id)),
        "name": DEFAULT_PROJECT_NAME,
        "description": "",
        "archived": False,
        "default": True,
        "version": 0,
        "created_at": None,
        "created_by": None,
        "updated_at": None,
        "updated_by": None,
    }


_COLUMNS = (
    "id, name, description, archived, version, created_at, created_by, updated_at, updated_by"
)


async def _rows(
    request: Request, principal: Principal, after: tuple[datetime, str] | None, limit: int
) -> list[Any]:
    """Up to ``limit`` + 1 projects other than the default one, after the cursor's."""
    where = ["org_id = :org", "id <> :default"]
    params: dict[str, Any] = {
        "org": principal.org_id,
        "default": default_project_id(principal.org_id),
        "limit": limit + 1,
    }
    if principal.project_id is not None:
        where.append("id = :project")
        params["project"] = principal.project_id
    if after is not None and after[0] > datetime.fromisoformat(_EPOCH):
        where.append("(created_at, id::text) > (CAST(:c_at AS timestamptz), :c_id)")
        params |= {"c_at": after[0], "c_id": after[1]}
    query = (
        f"SELECT {_COLUMNS} FROM projects WHERE {' AND '.join(where)} "
        "ORDER BY created_at, id::text LIMIT :limit"
    )
    async with request.app.state.read_engine.connect() as conn:
        return list((await conn.execute(text(query), params)).all())


async def _default_project(request: Request, org_id: str) -> dict[str, Any]:
    async with request.app.state.read_engine.connect() as conn:
        row = (
            await conn.execute(
                text(f"SELECT {_COLUMNS} FROM projects WHERE id = :id AND org_id = :org"),
                {"id": default_project_id(org_id), "org": org_id},
            )
        ).first()
    return _virgin_default(org_id) if row is None else _document(row, org_id)


@router.get(
    "/projects",
    summary="The organisation's projects, the default one first (a project's key: its own)",
    response_model=ProjectPage,
    responses=problems(400),
)
async def list_projects(request: Request, limit: Limit = 50, cursor: Cursor = None) -> Response:
    """The default project first, then the others oldest first (keyset pagination)."""
    principal = await authorize(request, Permission.READ_WORKFLOWS)
    default_id = default_project_id(principal.org_id)
    after = None
    if cursor is not None:
        (at,), last_id = decode_cursor(cursor, [CursorKey.INSTANT])
        after = (at, last_id)
    items: list[dict[str, Any]] = []
    if after is None and principal.project_id in (None, default_id):
        items.append(await _default_project(request, principal.org_id))
    rows = await _rows(request, principal, after, limit - len(items))
    items += [_document(row, principal.org_id) for row in rows]
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        last = items[-1]
        at = _EPOCH if last["default"] else last["created_at"]
        next_cursor = encode_cursor([at, last["id"]])
    return Response(
        dumps_answer({"items": items, "next_cursor": next_cursor}), media_type="application/json"
    )


@router.get(
    "/projects/{project_id}",
    summary="One project",
    response_model=ProjectDocument,
    responses={200: {"headers": {"ETag": {"schema": {"type": "string"}}}}, **problems(400, 404)},
)
async def get_project(project_id: UUID, request: Request) -> Response:
    principal = await authorize(request, Permission.READ_WORKFLOWS)
    if principal.project_id is not None and principal.project_id != project_id:
        raise _not_found(project_id)
    async with request.app.state.read_engine.connect() as conn:
        row = (
            await conn.execute(
                text(f"SELECT {_COLUMNS} FROM projects WHERE id = :id AND org_id = :org"),
                {"id": project_id, "org": principal.org_id},
            )
        ).first()
    if row is not None:
        document = _document(row, principal.org_id)
    elif project_id == default_project_id(principal.org_id):
        document = _virgin_default(principal.org_id)
    else:
        raise _not_found(project_id)
    return Response(
        dumps_answer(document),
        media_type="application/json",
        headers={"ETag": f'"{document["version"]}"'},
    )


@router.get(
    "/workflows/{workflow_id}/shares",
    summary="The projects a workflow is shared with, and their roles",
    response_model=SharesAnswer,
    responses={200: {"headers": PROJECTION_HEADERS}, **problems(400, 404)},
)
async def list_shares(
    workflow_id: UUID, request: Request, min_position: MinPosition = None
) -> Response:
    principal = await authorize(request, Permission.READ_WORKFLOWS)
    position = await _views_position(request, min_position)
    document = await get_document(
        request.app.state.read_engine,
        WORKFLOWS,
        principal.org_id,
        str(workflow_id),
        principal.project_id,
    )
    if document is None:
        raise Problem(
            404,
            f"workflow {workflow_id} not found",
            type_=problem_type("not-found"),
            headers={"X-Projection-Position": str(position)},
        )
    owner = document.get("project_id") or str(default_project_id(principal.org_id))
    shares: dict[str, str] = document.get("shares") or {}
    body = {
        "workflow_id": str(workflow_id),
        "project_id": owner,
        "items": [{"project_id": p, "role": r} for p, r in sorted(shares.items())],
    }
    return Response(
        dumps_answer(body),
        media_type="application/json",
        headers={"X-Projection-Position": str(position)},
    )


def _not_found(project_id: UUID) -> Problem:
    return Problem(404, f"project {project_id} not found", type_=problem_type("not-found"))
