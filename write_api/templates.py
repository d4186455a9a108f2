"""Template commands and our own import: publish, unpublish, instantiate, import.

Written like ``write_api.routes`` (the body parsed and the headers read by
hand, documented through ``openapi_extra``), but far from the hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from commands.templates import (
    ImportWorkflow,
    InstantiateTemplate,
    PublishTemplate,
    TemplateCommands,
    TemplateNotOwned,
    TemplateResult,
)
from domain.template import TemplateNotVisible, TemplateParametersInvalid, TemplateUnpublished
from infrastructure.auth import Permission
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type, said_as
from infrastructure.web import authorize
from write_api.routes import (
    _COMMAND_HEADERS,
    _IDEMPOTENCY_DOC,
    _LOG_POSITION,
    _WORKFLOW_LINKS,
    _context,
    _documented,
    _parse,
    _respond,
)
from write_api.schemas import CommandAnswer, TemplateAnswer

router = APIRouter(prefix="/v1")

_CREATED_WORKFLOW: dict[int | str, dict[str, Any]] = {
    201: {
        "headers": {**_COMMAND_HEADERS, "Location": {"schema": {"type": "string"}}},
        "links": _WORKFLOW_LINKS,
    }
}
_TEMPLATE_ID = {"template_id": "$response.body#/id"}
_TEMPLATE_LINKS = {
    "GetTemplate": {"operationId": "get_template", "parameters": _TEMPLATE_ID},
    "Instantiate": {"operationId": "instantiate_template", "parameters": _TEMPLATE_ID},
    "Unpublish": {"operationId": "unpublish_template", "parameters": _TEMPLATE_ID},
}


def _templates(request: Request) -> TemplateCommands:
    return TemplateCommands(request.app.state.workflow_commands)


def _template_answer(result: TemplateResult) -> Response:
    headers = {"X-Log-Position": str(result.position)}
    if result.status_code == 201:
        headers["Location"] = f"/v1/templates/{result.template_id}"
    body = {"id": str(result.template_id), "version": result.version, "position": result.position}
    return Response(
        orjson.dumps(body),
        status_code=result.status_code,
        headers=headers,
        media_type="application/json",
    )


@router.post(
    "/templates",
    status_code=201,
    tags=["templates"],
    summary="Publish a workflow version as a template (owners)",
    response_model=TemplateAnswer,
    responses={
        201: {
            "headers": {
                "X-Log-Position": _LOG_POSITION,
                "Location": {"schema": {"type": "string"}},
            },
            "links": _TEMPLATE_LINKS,
        },
        **problems(400, 403, 404, 410, 422),
    },
    openapi_extra=_documented(PublishTemplate),
)
async def publish_template(request: Request) -> Response:
    principal = await authorize(request, Permission.PUBLISH_TEMPLATES)
    command = await _parse(request, PublishTemplate)
    result = await run_in_threadpool(
        _templates(request).publish, command, _context(request, principal)
    )
    return _template_answer(result)


@router.post(
    "/templates/{template_id}/unpublish",
    tags=["templates"],
    summary="Unpublish a template: no new workflows from it; those it made stay (owners)",
    response_model=TemplateAnswer,
    responses={200: {"headers": {"X-Log-Position": _LOG_POSITION}}, **problems(400, 403, 404)},
)
async def unpublish_template(template_id: UUID, request: Request) -> Response:
    principal = await authorize(request, Permission.PUBLISH_TEMPLATES)
    result = await run_in_threadpool(
        _templates(request).unpublish, template_id, _context(request, principal)
    )
    return _template_answer(result)


@router.post(
    "/templates/{template_id}/instantiate",
    status_code=201,
    tags=["templates"],
    summary="Create a workflow from a template, its parameters substituted",
    response_model=CommandAnswer,
    responses={**_CREATED_WORKFLOW, **problems(400, 403, 404, 409, 410, 422)},
    openapi_extra=_documented(InstantiateTemplate, _IDEMPOTENCY_DOC),
)
async def instantiate_template(template_id: UUID, request: Request) -> Response:
    principal = await authorize(request, Permission.WRITE_WORKFLOWS)
    body = await request.body()
    # An empty body means every default: the template's name and parameter defaults.
    command = (
        await _parse(request, InstantiateTemplate)
        if body.strip()
        else InstantiateTemplate.model_validate({})
    )
    result = await run_in_threadpool(
        _templates(request).instantiate, template_id, command, _context(request, principal)
    )
    return _respond(result, location=True)


@router.post(
    "/import",
    status_code=201,
    tags=["workflows"],
    summary="Create a workflow from our export document (GET /v1/workflows/{id}/export)",
    response_model=CommandAnswer,
    responses={**_CREATED_WORKFLOW, **problems(400, 403, 404, 409, 422)},
    openapi_extra=_documented(ImportWorkflow, _IDEMPOTENCY_DOC),
)
async def import_workflow(
    request: Request,
    project_id: Annotated[UUID | None, Query(description="The project to create it in.")] = None,
) -> Response:
    principal = await authorize(request, Permission.WRITE_WORKFLOWS)
    command = await _parse(request, ImportWorkflow)
    result = await run_in_threadpool(
        _templates(request).import_workflow, command, _context(request, principal), project_id
    )
    return _respond(result, location=True)


# -- how template errors look from outside ---------------------------------------------


def _invalid_parameters(exc: TemplateParametersInvalid) -> Problem:
    return Problem(
        422,
        str(exc),
        type_=problem_type("invalid-template-parameters"),
        errors=[{"loc": problem.loc, "msg": problem.msg} for problem in exc.problems],
    )


TEMPLATE_PROBLEMS: dict[type[Exception], Callable[[Any], Problem]] = {
    TemplateParametersInvalid: _invalid_parameters,
    TemplateUnpublished: said_as(410, "template-unpublished"),
    TemplateNotVisible: said_as(404, "not-found"),
    TemplateNotOwned: said_as(403, "forbidden"),
}
