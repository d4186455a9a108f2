"""Commands on projects, and on a workflow's place in them: move and shares.

Projects are the organisation's structure: creating, renaming and archiving
one takes the ``projects:manage`` permission (owners). Moving a workflow
takes ``workflows:write`` and an organisation-wide key (a project's key sees
one project; a move decides between two). Sharing takes ``workflows:write``
from the workflow's own project (or an organisation-wide key). Move, share
and unshare are events in the workflow's history (``Workflow.Moved``,
``Workflow.Shared``, ``Workflow.Unshared``), so the audit log has them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from commands.errors import HookRouteTakenOutsideProject, ShareNotFound
from commands.models import MoveWorkflow, ShareWorkflow
from commands.projects import (
    CreateProject,
    ProjectCommands,
    ProjectNotFound,
    ProjectResult,
    ProjectScopeRefused,
    UpdateProject,
)
from commands.scope import ProjectAccessDenied
from domain.project import DefaultProjectPermanent, ProjectArchived
from infrastructure.auth import Permission
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type, said_as
from infrastructure.web import authorize
from write_api.routes import (
    _COMMAND_HEADERS,
    _IDEMPOTENCY_DOC,
    _IF_MATCH_DOC,
    _commands,
    _context,
    _documented,
    _parse,
    expected_version,
    versioned_command,
)
from write_api.schemas import CommandAnswer

router = APIRouter(prefix="/v1")


class ProjectAnswer(BaseModel):
    """A project command's answer: its version now, and its last event's log position."""

    id: UUID
    version: int = Field(ge=0, description="The project's version; the next If-Match.")
    position: int | None = Field(
        None, ge=0, description="Null when nothing was recorded (nothing changed)."
    )


PROJECT_PROBLEMS: dict[type[Exception], Callable[[Any], Problem]] = {
    ProjectNotFound: said_as(404, "not-found"),
    ShareNotFound: said_as(404, "not-found"),
    ProjectScopeRefused: said_as(403, "forbidden"),
    ProjectAccessDenied: said_as(403, "forbidden"),
    ProjectArchived: said_as(409, "project-archived"),
    HookRouteTakenOutsideProject: lambda exc: Problem(
        409, str(exc), type_=problem_type("webhook-route-taken"), method=exc.method, path=exc.path
    ),
    DefaultProjectPermanent: said_as(409, "default-project"),
}

_PROJECT_HEADERS = {
    "ETag": {"description": 'The project\'s version: "2".', "schema": {"type": "string"}},
    "X-Log-Position": _COMMAND_HEADERS["X-Log-Position"],
}
_PROJECT_IF_MATCH = {
    **_IF_MATCH_DOC,
    "description": 'The project version you saw, as its ETag: "2" ("0" for the default '
    "project before its first change). 428 without it, 409 if another change came first.",
}
_SHARE_PROBLEMS = problems(400, 403, 404, 409, 410, 422, 428)


def _projects(request: Request) -> ProjectCommands:
    return request.app.state.project_commands  # type: ignore[no-any-return]


def _project_response(result: ProjectResult) -> Response:
    headers = {"ETag": f'"{result.version}"'}
    if result.position is not None:
        headers["X-Log-Position"] = str(result.position)
    if result.status_code == 201:
        headers["Location"] = f"/v1/projects/{result.project_id}"
    body: dict[str, Any] = {
        "id": str(result.project_id),
        "version": result.version,
        "position": result.position,
    }
    return Response(
        orjson.dumps(body),
        status_code=result.status_code,
        headers=headers,
        media_type="application/json",
    )


@router.post(
    "/projects",
    status_code=201,
    tags=["projects"],
    summary="Create a project (owners; organisation-wide keys)",
    response_model=ProjectAnswer,
    responses={
        201: {"headers": {**_PROJECT_HEADERS, "Location": {"schema": {"type": "string"}}}},
        **problems(400, 403, 422),
    },
    openapi_extra=_documented(CreateProject, _IDEMPOTENCY_DOC),
)
async def create_project(request: Request) -> Response:
    principal = await authorize(request, Permission.MANAGE_PROJECTS)
    command = await _parse(request, CreateProject)
    result = await run_in_threadpool(
        _projects(request).create, command, _context(request, principal)
    )
    return _project_response(result)


@router.patch(
    "/projects/{project_id}",
    tags=["projects"],
    summary="Rename, describe or archive a project (owners; If-Match required)",
    response_model=ProjectAnswer,
    responses={200: {"headers": _PROJECT_HEADERS}, **problems(400, 403, 404, 409, 422, 428)},
    openapi_extra=_documented(UpdateProject, _PROJECT_IF_MATCH),
)
async def update_project(project_id: UUID, request: Request) -> Response:
    principal = await authorize(request, Permission.MANAGE_PROJECTS)
    version = expected_version(request)
    command = await _parse(request, UpdateProject)
    result = await run_in_threadpool(
        _projects(request).update, project_id, command, version, _context(request, principal)
    )
    return _project_response(result)


@router.post(
    "/workflows/{workflow_id}/move",
    tags=["workflows"],
    summary="Move a workflow to another project (organisation-wide keys; If-Match required)",
    response_model=CommandAnswer,
    responses={200: {"headers": _COMMAND_HEADERS}, **_SHARE_PROBLEMS},
    openapi_extra=_documented(MoveWorkflow, _IF_MATCH_DOC, _IDEMPOTENCY_DOC),
)
async def move_workflow(workflow_id: UUID, request: Request) -> Response:
    return await versioned_command(
        request, partial(_commands(request).move, workflow_id), MoveWorkflow
    )


@router.post(
    "/workflows/{workflow_id}/shares",
    tags=["workflows"],
    summary="Grant another project viewer or editor on a workflow (If-Match required)",
    response_model=CommandAnswer,
    responses={200: {"headers": _COMMAND_HEADERS}, **_SHARE_PROBLEMS},
    openapi_extra=_documented(ShareWorkflow, _IF_MATCH_DOC, _IDEMPOTENCY_DOC),
)
async def share_workflow(workflow_id: UUID, request: Request) -> Response:
    return await versioned_command(
        request, partial(_commands(request).share, workflow_id), ShareWorkflow
    )


@router.delete(
    "/workflows/{workflow_id}/shares/{project_id}",
    tags=["workflows"],
    summary="Revoke a project's grant on a workflow (If-Match required)",
    response_model=CommandAnswer,
    responses={200: {"headers": _COMMAND_HEADERS}, **_SHARE_PROBLEMS},
    openapi_extra=_documented(None, _IF_MATCH_DOC, _IDEMPOTENCY_DOC),
)
async def unshare_workflow(workflow_id: UUID, project_id: UUID, request: Request) -> Response:
    return await versioned_command(
        request, partial(_commands(request).unshare, workflow_id, project_id)
    )
