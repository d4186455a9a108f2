"""Command endpoints.

These are the hottest code in the service, so they do explicitly what FastAPI
would do through its dependency machinery (which costs more per request than
the rest of a small command): authenticate, read the headers, validate the
body with pydantic's JSON parser, then run the synchronous handler
(eventsourcing has no asyncio API) in the thread pool. The OpenAPI document
describes the same body and headers through ``openapi_extra``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar
from uuid import UUID

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from commands import CommandContext, CommandResult, CreateWorkflow, UpdateWorkflow, WorkflowCommands
from commands.executions import ExecutionCommands
from commands.models import (
    ExecutionResult,
    RetryExecution,
    RevertWorkflow,
    RotateWebhookSecret,
    RunWorkflow,
)
from infrastructure.auth import Permission, Principal
from infrastructure.json_codec import dumps_answer
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type
from infrastructure.tracing import current_traceparent
from infrastructure.web import authorize
from write_api.bulkhead import SyncRunBulkhead
from write_api.limits import execution_allowance, sync_run_limit
from write_api.schemas import CommandAnswer, ExecutionAnswer

router = APIRouter(prefix="/v1")

_IF_MATCH = re.compile(r'^"?([0-9]{1,18})"?$')
_IDEMPOTENCY_KEY = re.compile(r"^[!-~]{1,255}$")  # visible ASCII

# Answer headers, as the document declares them.
_ETAG = {"description": 'The version now, as an ETag: "3".', "schema": {"type": "string"}}
_LOG_POSITION = {
    "description": "The log position of the command's last event.",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_COMMAND_HEADERS = {"ETag": _ETAG, "X-Log-Position": _LOG_POSITION}
_EXECUTION_HEADERS = {
    "X-Log-Position": _LOG_POSITION,
    "Location": {"description": "The execution's URL.", "schema": {"type": "string"}},
}
# OpenAPI links: where an answer's id and ETag lead (clients and schemathesis follow them).
_WORKFLOW_ID = {"workflow_id": "$response.body#/id"}
_WITH_ETAG = {**_WORKFLOW_ID, "header.If-Match": "$response.header.ETag"}
_WORKFLOW_LINKS = {
    "GetWorkflow": {"operationId": "get_workflow", "parameters": _WORKFLOW_ID},
    "History": {"operationId": "workflow_history", "parameters": _WORKFLOW_ID},
    "Versions": {"operationId": "list_versions", "parameters": _WORKFLOW_ID},
    "Run": {"operationId": "run_workflow", "parameters": _WORKFLOW_ID},
    "Update": {"operationId": "update_workflow", "parameters": _WITH_ETAG},
    "Activate": {"operationId": "activate_workflow", "parameters": _WITH_ETAG},
    "Delete": {"operationId": "delete_workflow", "parameters": _WITH_ETAG},
}
_EXECUTION_ID = {"execution_id": "$response.body#/execution_id"}
_EXECUTION_LINKS = {
    "GetExecution": {"operationId": "get_execution", "parameters": _EXECUTION_ID},
    "Cancel": {"operationId": "cancel_execution", "parameters": _EXECUTION_ID},
    "Retry": {"operationId": "retry_execution", "parameters": _EXECUTION_ID},
}
# What every command on a workflow may answer besides its 2xx: a bad header
# (400), no such workflow (404), another change first or a hook route taken
# (409), deleted (410), an invalid definition or body (422), no If-Match (428).
_WORKFLOW_PROBLEMS = problems(400, 404, 409, 410, 422, 428)


def expected_version(request: Request) -> int:
    """The version (the definition's revision) the client saw, from ``If-Match: "<version>"``."""
    if_match = request.headers.get("if-match")
    if if_match is None:
        raise Problem(
            428,
            'If-Match header required: send the workflow\'s ETag, e.g. If-Match: "3"',
            type_=problem_type("precondition-required"),
        )
    match = _IF_MATCH.match(if_match.strip())
    if match is None:
        raise Problem(
            400,
            f'If-Match must be one version ETag such as "3", not {if_match!r}',
            type_=problem_type("bad-if-match"),
        )
    return int(match.group(1))


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise Problem(
            400,
            "Idempotency-Key must be 1-255 visible ASCII characters",
            type_=problem_type("bad-idempotency-key"),
        )
    return key


# Headers are read in the endpoint rather than declared as FastAPI parameters
# (each declared parameter costs a dependency-resolution step per request);
# these entries document them in OpenAPI all the same.
_IF_MATCH_DOC = {
    "name": "If-Match",
    "in": "header",
    "required": True,
    "description": 'The version you saw, as its ETag: "3". 428 without it, 409 if another '
    "change came first (runs do not change the version).",
    "schema": {"type": "string", "pattern": _IF_MATCH.pattern, "examples": ['"3"']},
}
_IDEMPOTENCY_DOC = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Retry-safe key (1-255 visible ASCII): the same key and request "
    "returns the first answer and writes nothing; a different request is 422.",
    "schema": {"type": "string", "pattern": _IDEMPOTENCY_KEY.pattern},
}


ModelT = TypeVar("ModelT", bound=BaseModel)


def _documented(body: type[BaseModel] | None, *headers: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body and headers itself."""
    extra: dict[str, Any] = {"parameters": list(headers)}
    if body is not None:
        extra["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _inlined(body.model_json_schema())}},
        }
    return extra


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` put in place: the document has no ``#/$defs`` for
    them to point at (Redoc, for one, refuses the whole document over such a $ref)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


async def _parse(request: Request, model: type[ModelT]) -> ModelT:
    """The body as ``model``; errors take the same path as FastAPI's own."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


async def _writer(request: Request) -> Principal:
    return await authorize(request, Permission.WRITE_WORKFLOWS)


def _commands(request: Request) -> WorkflowCommands:
    return request.app.state.workflow_commands  # type: ignore[no-any-return]


def _context(request: Request, principal: Principal) -> CommandContext:
    return CommandContext(
        org_id=principal.org_id,
        actor=principal.actor,
        correlation_id=request.state.request_id,
        idempotency_key=idempotency_key(request),
        traceparent=current_traceparent(),
        project_id=principal.project_id,
    )


def _respond(result: CommandResult, *, location: bool = False) -> Response:
    headers = {"ETag": f'"{result.version}"', "X-Log-Position": str(result.position)}
    if location:
        headers["Location"] = f"/v1/workflows/{result.workflow_id}"
    body: dict[str, Any] = {
        "id": str(result.workflow_id),
        "version": result.version,
        "position": result.position,
    }
    if result.webhook_secrets:
        body["webhook_secrets"] = result.webhook_secrets  # shown this once, never logged
    return Response(
        orjson.dumps(body),
        status_code=result.status_code,
        headers=headers,
        media_type="application/json",
    )


async def versioned_command(
    request: Request,
    run: Callable[..., CommandResult],
    body: type[BaseModel] | None = None,
    *,
    location: bool = False,
) -> Response:
    """The shape of every If-Match command on a workflow, checked in this order:
    the key may write (401/403), If-Match (428), the body (422); then
    ``run([command,] version, context)`` off the event loop, and its answer."""
    principal = await _writer(request)
    version = expected_version(request)
    command = () if body is None else (await _parse(request, body),)
    result = await run_in_threadpool(run, *command, version, _context(request, principal))
    return _respond(result, location=location)


@router.post(
    "/workflows",
    status_code=201,
    tags=["workflows"],
    summary="Create a workflow",
    response_model=CommandAnswer,
    responses={
        201: {
            "headers": {**_COMMAND_HEADERS, "Location": {"schema": {"type": "string"}}},
            "links": _WORKFLOW_LINKS,
        },
        # 404: no such project (or not the key's); 409: an archived project, or
        # the organisation's max_workflows reached.
        **problems(400, 404, 409, 422),
    },
    openapi_extra=_documented(CreateWorkflow, _IDEMPOTENCY_DOC),
)
async def create_workflow(request: Request) -> Response:
    principal = await _writer(request)
    command = await _parse(request, CreateWorkflow)
    result = await run_in_threadpool(
        _commands(request).create, command, _context(request, principal)
    )
    return _respond(result, location=True)


@router.patch(
    "/workflows/{workflow_id}",
    tags=["workflows"],
    summary="Change some fields of a workflow (If-Match required)",
    response_model=CommandAnswer,
    responses={200: {"headers": _COMMAND_HEADERS, "links": _WORKFLOW_LINKS}, **_WORKFLOW_PROBLEMS},
    openapi_extra=_documented(UpdateWorkflow, _IF_MATCH_DOC, _IDEMPOTENCY_DOC),
)
async def update_workflow(workflow_id: UUID, request: Request) -> Response:
    return await versioned_command(
        request, partial(_commands(request).update, workflow_id), UpdateWorkflow
    )


@router.delete(
    "/workflows/{workflow_id}",
    tags=["workflows"],
    summary="Delete a workflow (If-Match required); its history is kept",
    response_model=CommandAnswer,
    responses={200: {"headers": _COMMAND_HEADERS}, **_WORKFLOW_PROBLEMS},
    openapi_extra=_documented(None, _IF_MATCH_DOC, _IDEMPOTENCY_DOC),
)
async def delete_workflow(workflow_id: UUID, request: Request) -> Response:
    return await versioned_command(request, partial(_commands(request).delete, workflow_id))


@router.post(
    "/workflows/{workflow_id}/revert",
    tags=["workflows"],
    summary="Restore the definition of an earlier version, as a new version (If-Match required)",
    response_model=CommandAnswer,
    responses={200: {"headers": _COMMAND_HEADERS}, **_WORKFLOW_PROBLEMS},
    openapi_extra=_documented(RevertWorkflow, _IF_MATCH_DOC, _IDEMPOTENCY_DOC),
)
async def revert_workflow(workflow_id: UUID, request: Request) -> Response:
    return await versioned_command(
        request, partial(_commands(request).revert, workflow_id), RevertWorkflow
    )


# -- executions ---------------------------------------------------------------------

_EXECUTION_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The run finished: its output",
        "headers": _EXECUTION_HEADERS,
        "links": _EXECUTION_LINKS,
    },
    202: {
        "description": "Queued for a worker",
        "model": ExecutionAnswer,
        "headers": _EXECUTION_HEADERS,
        "links": _EXECUTION_LINKS,
    },
}


def _executions(request: Request) -> ExecutionCommands:
    return request.app.state.execution_commands  # type: ignore[no-any-return]


def execution_response(result: ExecutionResult) -> Response:
    body: dict[str, Any] = {
        "execution_id": str(result.execution_id),
        "status": result.status,
        "position": result.position,
    }
    if result.status_code == 200:
        body["output"] = result.output
        body["error"] = result.error
    return Response(
        # The run is recorded by now: its answer must not fail on what it holds.
        dumps_answer(body),
        status_code=result.status_code,
        headers={
            "X-Log-Position": str(result.position),
            "Location": f"/v1/executions/{result.execution_id}",
        },
        media_type="application/json",
    )


@router.post(
    "/workflows/{workflow_id}/executions",
    tags=["executions"],
    summary="Run a workflow: sync answers with its output, async queues it (202)",
    response_model=ExecutionAnswer,
    responses={**_EXECUTION_ANSWERS, **problems(400, 404, 409, 410, 422, 429)},
    openapi_extra=_documented(RunWorkflow, _IDEMPOTENCY_DOC),
)
async def run_workflow(workflow_id: UUID, request: Request) -> Response:
    principal = await authorize(request, Permission.EXECUTE_WORKFLOWS)
    command = await _parse(request, RunWorkflow)
    start = _executions(request).start
    context = _context(request, principal)
    async with execution_allowance(request, principal.org_id):
        if command.mode == "sync":
            # Its own pool, so long runs never hold the command threads.
            bulkhead: SyncRunBulkhead = request.app.state.sync_runs
            limit = await sync_run_limit(request, principal.org_id)
            result = await bulkhead.run(
                principal.org_id, start, workflow_id, command, context, limit=limit
            )
        else:
            result = await run_in_threadpool(start, workflow_id, command, context)
    return execution_response(result)


@router.post(
    "/executions/{execution_id}/cancel",
    tags=["executions"],
    summary="Cancel a queued or running execution; a finished one is 409",
    response_model=ExecutionAnswer,
    responses={200: {"headers": _EXECUTION_HEADERS}, **problems(400, 404, 409, 422)},
    openapi_extra=_documented(None, _IDEMPOTENCY_DOC),
)
async def cancel_execution(execution_id: UUID, request: Request) -> Response:
    principal = await authorize(request, Permission.EXECUTE_WORKFLOWS)
    result = await run_in_threadpool(
        _executions(request).cancel, execution_id, _context(request, principal)
    )
    return execution_response(result)


@router.post(
    "/executions/{execution_id}/retry",
    tags=["executions"],
    summary="Retry a failed, crashed or canceled execution as a new one (async by default)",
    response_model=ExecutionAnswer,
    responses={**_EXECUTION_ANSWERS, **problems(400, 404, 409, 410, 422, 429)},
    openapi_extra=_documented(RetryExecution, _IDEMPOTENCY_DOC),
)
async def retry_execution(execution_id: UUID, request: Request) -> Response:
    principal = await authorize(request, Permission.EXECUTE_WORKFLOWS)
    body = await request.body()
    # An empty body means every default: retry from the start, as it ran.
    command = (
        await _parse(request, RetryExecution) if body.strip() else RetryExecution.model_validate({})
    )
    retry = _executions(request).retry
    context = _context(request, principal)
    async with execution_allowance(request, principal.org_id):
        if command.mode == "sync":
            bulkhead: SyncRunBulkhead = request.app.state.sync_runs
            limit = await sync_run_limit(request, principal.org_id)
            result = await bulkhead.run(
                principal.org_id, retry, execution_id, command, context, limit=limit
            )
        else:
            result = await run_in_threadpool(retry, execution_id, command, context)
    return execution_response(result)


# -- activation ---------------------------------------------------------------------

_ACTIVATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"headers": _COMMAND_HEADERS},
    **_WORKFLOW_PROBLEMS,
}


@router.post(
    "/workflows/{workflow_id}/activate",
    tags=["workflows"],
    summary="Switch a workflow's triggers on (If-Match required; the version stays)",
    response_model=CommandAnswer,
    responses=_ACTIVATION_RESPONSES,
    openapi_extra=_documented(None, _IF_MATCH_DOC, _IDEMPOTENCY_DOC),
)
async def activate_workflow(workflow_id: UUID, request: Request) -> Response:
    return await versioned_command(request, partial(_commands(request).activate, workflow_id))


@router.post(
    "/workflows/{workflow_id}/deactivate",
    tags=["workflows"],
    summary="Switch a workflow's triggers off (If-Match required; the version stays)",
    response_model=CommandAnswer,
    responses=_ACTIVATION_RESPONSES,
    openapi_extra=_documented(None, _IF_MATCH_DOC, _IDEMPOTENCY_DOC),
)
async def deactivate_workflow(workflow_id: UUID, request: Request) -> Response:
    return await versioned_command(request, partial(_commands(request).deactivate, workflow_id))


@router.post(
    "/workflows/{workflow_id}/webhook-secret/rotate",
    tags=["workflows"],
    summary="Replace one active hook's token or HMAC secret, shown once (If-Match required)",
    response_model=CommandAnswer,
    responses=_ACTIVATION_RESPONSES,
    openapi_extra=_documented(RotateWebhookSecret, _IF_MATCH_DOC, _IDEMPOTENCY_DOC),
)
async def rotate_webhook_secret(workflow_id: UUID, request: Request) -> Response:
    return await versioned_command(
        request,
        partial(_commands(request).rotate_webhook_secret, workflow_id),
        RotateWebhookSecret,
    )
