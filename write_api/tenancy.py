"""Organisations (``/v1/admin/organisations``, platform admins) and API keys
(``/v1/keys``, owners): the commands. Each change is an event in the log.

Not the hot path: plain FastAPI bodies, the synchronous commands in the
thread pool.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import orjson
from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from commands.tenancy import (
    Actor,
    ApiKeyCommands,
    OrganisationBusy,
    OrganisationCommands,
    OrganisationExists,
    OrganisationNotFound,
    OrganisationState,
)
from infrastructure.auth import Permission, Principal, Role
from infrastructure.openapi import problems
from infrastructure.org_policy import OrgPolicies
from infrastructure.problems import Problem, problem_type
from infrastructure.tenancy_schemas import (
    ORG_ID,
    CreateKey,
    CreateOrganisation,
    KeyCreated,
    KeyRevoked,
    OrganisationAnswer,
    OrganisationLimits,
    RenameOrganisation,
    SuspendOrganisation,
    key_json,
)
from infrastructure.web import authorize
from write_api.routes import _documented
from write_api.routes import _parse as parse_body

router = APIRouter(prefix="/v1")

T = TypeVar("T")
OrgId = Path(pattern=ORG_ID, description="The organisation's id.")


def _actor(request: Request, principal: Principal) -> Actor:
    return Actor(actor=principal.actor, correlation_id=request.state.request_id)


def _json(body: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


async def _organisation_command(
    request: Request, org_id: str, command: Callable[[OrganisationCommands], OrganisationState]
) -> OrganisationState:
    organisations: OrganisationCommands = request.app.state.organisation_commands
    try:
        state = await run_in_threadpool(command, organisations)
    except OrganisationExists as exc:
        raise Problem(409, str(exc), type_=problem_type("organisation-exists")) from None
    except OrganisationNotFound as exc:
        raise Problem(404, str(exc), type_=problem_type("not-found")) from None
    except OrganisationBusy as exc:
        raise Problem(409, str(exc), type_=problem_type("conflict")) from None
    policies: OrgPolicies | None = getattr(request.app.state, "org_policies", None)
    if policies is not None:
        policies.forget(org_id)  # this process sees its own change at once
    return state


_ORG_ANSWER = {"model": OrganisationAnswer, "description": "The organisation now"}


@router.post(
    "/admin/organisations",
    status_code=201,
    tags=["admin"],
    summary="Create an organisation (platform admins)",
    response_model=OrganisationAnswer,
    responses={201: {"description": "Created"}, **problems(409)},
    openapi_extra=_documented(CreateOrganisation),
)
async def create_organisation(request: Request) -> Response:
    principal = await authorize(request, Permission.MANAGE_ORGANISATIONS)
    body = await parse_body(request, CreateOrganisation)
    actor = _actor(request, principal)
    state = await _organisation_command(
        request,
        body.id,
        lambda orgs: orgs.create(body.id, body.name, body.limits.as_limits(), actor),
    )
    return _json(state.as_json(), 201)


@router.patch(
    "/admin/organisations/{org_id}",
    tags=["admin"],
    summary="Rename an organisation (platform admins)",
    response_model=OrganisationAnswer,
    responses={200: _ORG_ANSWER, **problems(404, 409)},
    openapi_extra=_documented(RenameOrganisation),
)
async def rename_organisation(request: Request, org_id: str = OrgId) -> Response:
    principal = await authorize(request, Permission.MANAGE_ORGANISATIONS)
    body = await parse_body(request, RenameOrganisation)
    actor = _actor(request, principal)
    state = await _organisation_command(
        request, org_id, lambda orgs: orgs.rename(org_id, body.name, actor)
    )
    return _json(state.as_json())


@router.post(
    "/admin/organisations/{org_id}/suspend",
    tags=["admin"],
    summary="Suspend an organisation: every key of it gets 403, its webhooks too; nothing is lost",
    response_model=OrganisationAnswer,
    responses={200: _ORG_ANSWER, **problems(404, 409)},
    openapi_extra=_documented(SuspendOrganisation),
)
async def suspend_organisation(request: Request, org_id: str = OrgId) -> Response:
    principal = await authorize(request, Permission.MANAGE_ORGANISATIONS)
    body = await parse_body(request, SuspendOrganisation)
    actor = _actor(request, principal)
    state = await _organisation_command(
        request, org_id, lambda orgs: orgs.suspend(org_id, body.reason, actor)
    )
    return _json(state.as_json())


@router.post(
    "/admin/organisations/{org_id}/reinstate",
    tags=["admin"],
    summary="Reinstate a suspended organisation: its keys and webhooks work again",
    response_model=OrganisationAnswer,
    responses={200: _ORG_ANSWER, **problems(404, 409)},
)
async def reinstate_organisation(request: Request, org_id: str = OrgId) -> Response:
    principal = await authorize(request, Permission.MANAGE_ORGANISATIONS)
    actor = _actor(request, principal)
    state = await _organisation_command(request, org_id, lambda orgs: orgs.reinstate(org_id, actor))
    return _json(state.as_json())


@router.put(
    "/admin/organisations/{org_id}/limits",
    tags=["admin"],
    summary="Set an organisation's own limits (those left out follow the global settings)",
    response_model=OrganisationAnswer,
    responses={200: _ORG_ANSWER, **problems(404, 409)},
    openapi_extra=_documented(OrganisationLimits),
)
async def set_organisation_limits(request: Request, org_id: str = OrgId) -> Response:
    principal = await authorize(request, Permission.MANAGE_ORGANISATIONS)
    body = await parse_body(request, OrganisationLimits)
    actor = _actor(request, principal)
    state = await _organisation_command(
        request, org_id, lambda orgs: orgs.set_limits(org_id, body.as_limits(), actor)
    )
    return _json(state.as_json())


# -- API keys -------------------------------------------------------------------------


def _keys(request: Request) -> ApiKeyCommands:
    return request.app.state.key_commands  # type: ignore[no-any-return]


@router.post(
    "/keys",
    status_code=201,
    tags=["keys"],
    summary="Create an API key of your organisation (owners); the secret is shown once",
    response_model=KeyCreated,
    # 404: the project_id names no project of the organisation (as for a workflow's create).
    responses={
        201: {"description": "Created; `key` is shown in this answer only"},
        **problems(404),
    },
    openapi_extra=_documented(CreateKey),
)
async def create_key(request: Request) -> Response:
    principal = await authorize(request, Permission.MANAGE_KEYS)
    body = await parse_body(request, CreateKey)
    if body.role == Role.PLATFORM_ADMIN:
        raise Problem(
            403,
            "platform_admin keys are made only with the CLI (reporunner keys create)",
            type_=problem_type("forbidden"),
        )
    now = datetime.now(UTC)
    if body.expires_at is not None and body.expires_at <= now:
        raise Problem(
            422,
            f"expires_at {body.expires_at.isoformat()} is not in the future",
            type_=problem_type("validation"),
            errors=[{"loc": "body.expires_at", "msg": "must be in the future"}],
        )
    info, plaintext, position = await run_in_threadpool(
        lambda: _keys(request).create(
            principal.org_id,
            body.role,
            body.name,
            _actor(request, principal),
            expires_at=body.expires_at,
            project_id=body.project_id,
        )
    )
    answer = {**key_json(info, now), "key": plaintext, "position": position}
    response = _json(answer, 201)
    response.headers["Location"] = f"/v1/keys/{info.id}"
    response.headers["Cache-Control"] = "no-store"  # it holds the secret
    return response


@router.delete(
    "/keys/{key_id}",
    tags=["keys"],
    summary="Revoke an API key of your organisation (owners); it is refused at once (401)",
    response_model=KeyRevoked,
    responses=problems(404),
)
async def revoke_key(key_id: UUID, request: Request) -> Response:
    principal = await authorize(request, Permission.MANAGE_KEYS)
    position = await run_in_threadpool(
        _keys(request).revoke, key_id, _actor(request, principal), principal.org_id
    )
    if position is None:
        raise Problem(
            404,
            f"no active key {key_id} in organisation '{principal.org_id}'",
            type_=problem_type("not-found"),
        )
    request.app.state.api_keys.forget(key_id)
    return _json({"id": str(key_id), "status": "revoked", "position": position})
