"""Credential commands: POST/PATCH/DELETE /v1/credentials (owners and editors).

A secret goes in once and never comes out: every answer is the metadata
(``read_api/credentials.py`` lists it), and the secret is sealed before
anything is recorded (``commands/credentials.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.persistence import IntegrityError
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from commands.credentials import (
    CREATE_SCHEMA,
    UPDATE_SCHEMA,
    CreateCredential,
    CredentialCommands,
    CredentialNotFound,
    CredentialResult,
    CredentialTypeMismatch,
    UpdateCredential,
)
from commands.models import CommandContext
from domain.credentials import CredentialDeleted, CredentialInvalid
from infrastructure.auth import Permission, Principal
from infrastructure.json_codec import dumps_answer
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type
from infrastructure.tracing import current_traceparent
from infrastructure.web import authorize
from read_api.credentials import CredentialInfo

router = APIRouter(prefix="/v1", tags=["credentials"])

ModelT = TypeVar("ModelT", bound=BaseModel)
_LOG_POSITION = {
    "description": "The log position of the command's last event.",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}


def _body_doc(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _parse(request: Request, model: type[ModelT]) -> ModelT:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        # Never echo the input: it may be the secret itself.
        errors = [
            {k: v for k, v in {**error, "loc": ("body", *error["loc"])}.items() if k != "input"}
            for error in exc.errors(include_url=False, include_context=False)
        ]
        raise RequestValidationError(errors) from None


def _commands(request: Request) -> CredentialCommands:
    commands: CredentialCommands | None = getattr(request.app.state, "credential_commands", None)
    if commands is None:
        raise Problem(503, "credentials need a master key", type_=problem_type("no-master-key"))
    return commands


def _context(request: Request, principal: Principal) -> CommandContext:
    return CommandContext(
        org_id=principal.org_id,
        actor=principal.actor,
        correlation_id=request.state.request_id,
        traceparent=current_traceparent(),
    )


async def _run(
    request: Request, principal: Principal, call: Callable[..., CredentialResult], *args: Any
) -> Response:
    try:
        result = await run_in_threadpool(call, *args, _context(request, principal))
    except CredentialInvalid as exc:
        raise Problem(
            422,
            str(exc),
            type_=problem_type("invalid-credential"),
            errors=[{"loc": ["body", *p.loc.split(".")], "msg": p.msg} for p in exc.problems],
        ) from None
    except CredentialTypeMismatch as exc:
        raise Problem(409, str(exc), type_=problem_type("credential-type-mismatch")) from None
    except (CredentialNotFound, CredentialDeleted) as exc:
        raise Problem(404, str(exc), type_=problem_type("not-found")) from None
    except IntegrityError:
        raise Problem(
            503, "the credential is changing; try again", headers={"Retry-After": "1"}
        ) from None
    body = {**result.info, "position": result.position}
    headers = {"X-Log-Position": str(result.position)}
    if result.status_code == 201:
        headers["Location"] = f"/v1/credentials/{result.credential_id}"
    return Response(
        dumps_answer(body),
        status_code=result.status_code,
        headers=headers,
        media_type="application/json",
    )


async def _writer(request: Request) -> Principal:
    return await authorize(request, Permission.MANAGE_CREDENTIALS)


_ANSWER = {"model": CredentialInfo, "headers": {"X-Log-Position": _LOG_POSITION}}


@router.post(
    "/credentials",
    status_code=201,
    summary="Create a credential; its secret is sealed and never answered",
    response_model=CredentialInfo,
    responses={201: _ANSWER, **problems(400, 422, 503)},
    openapi_extra=_body_doc(CREATE_SCHEMA),
)
async def create_credential(request: Request) -> Response:
    principal = await _writer(request)
    command = await _parse(request, CreateCredential)
    return await _run(request, principal, _commands(request).create, command)


@router.patch(
    "/credentials/{credential_id}",
    summary="Rename a credential and/or replace its secret",
    response_model=CredentialInfo,
    responses={200: _ANSWER, **problems(400, 404, 409, 422, 503)},
    openapi_extra=_body_doc(UPDATE_SCHEMA),
)
async def update_credential(credential_id: UUID, request: Request) -> Response:
    principal = await _writer(request)
    command = await _parse(request, UpdateCredential)
    return await _run(request, principal, _commands(request).update, credential_id, command)


@router.delete(
    "/credentials/{credential_id}",
    summary="Delete a credential: nodes naming it fail from now on; its events stay",
    response_model=CredentialInfo,
    responses={200: _ANSWER, **problems(400, 404, 422, 503)},
)
async def delete_credential(credential_id: UUID, request: Request) -> Response:
    principal = await _writer(request)
    return await _run(request, principal, _commands(request).delete, credential_id)
