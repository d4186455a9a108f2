"""Organisations (``/v1/admin/organisations``, platform admins) and API keys
(``/v1/keys``, owners): the queries. Both read their tables on the primary
(they are not views: written with their events), keyset-paginated."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import text
from starlette.responses import Response

from infrastructure.auth import KEY_COLUMNS, Permission, Role, key_info
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type
from infrastructure.tenancy_schemas import (
    ORG_ID,
    KeyPage,
    OrganisationAnswer,
    OrganisationPage,
    key_json,
)
from infrastructure.web import authorize

router = APIRouter(prefix="/v1")

# Organisations with a record, and those known only by their (tenant) keys.
_ORGANISATIONS = text(
    "SELECT ids.org_id, o.name, o.status, o.suspended_reason, o.limits::text AS limits, "
    "o.version FROM ("
    "(SELECT org_id FROM organisations WHERE org_id > :after ORDER BY org_id LIMIT :n) "
    "UNION "
    "(SELECT DISTINCT org_id FROM api_keys WHERE org_id > :after AND role <> 'platform_admin' "
    "ORDER BY org_id LIMIT :n)"
    ") AS ids LEFT JOIN organisations o USING (org_id) ORDER BY ids.org_id LIMIT :n"
)


def _organisation(row: Any) -> dict[str, Any]:
    if row.status is None:
        return {
            "id": row.org_id,
            "name": row.org_id,
            "status": "active",
            "suspended_reason": None,
            "limits": {},
            "version": 0,
            "position": None,
            "registered": False,
        }
    return {
        "id": row.org_id,
        "name": row.name,
        "status": row.status,
        "suspended_reason": row.suspended_reason,
        "limits": orjson.loads(row.limits),
        "version": row.version,
        "position": None,
        "registered": True,
    }


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/admin/organisations",
    tags=["admin"],
    summary="List organisations (platform admins), by id",
    response_model=OrganisationPage,
)
async def list_organisations(
    request: Request,
    after: str = Query("", max_length=63, description="The last id of the previous page."),
    limit: int = Query(100, ge=1, le=500),
) -> Response:
    await authorize(request, Permission.MANAGE_ORGANISATIONS)
    async with request.app.state.engine.connect() as conn:
        rows = (await conn.execute(_ORGANISATIONS, {"after": after, "n": limit + 1})).all()
    items = [_organisation(row) for row in rows[:limit]]
    next_after = items[-1]["id"] if len(rows) > limit else None
    return _json({"items": items, "next_after": next_after})


@router.get(
    "/admin/organisations/{org_id}",
    tags=["admin"],
    summary="One organisation (platform admins)",
    response_model=OrganisationAnswer,
    responses=problems(404),
)
async def get_organisation(
    request: Request, org_id: str = Path(pattern=ORG_ID, description="The organisation's id.")
) -> Response:
    await authorize(request, Permission.MANAGE_ORGANISATIONS)
    async with request.app.state.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT :org AS org_id, o.name, o.status, o.suspended_reason, "
                    "o.limits::text AS limits, o.version FROM (SELECT 1) AS one "
                    "LEFT JOIN organisations o ON o.org_id = :org "
                    "WHERE o.org_id IS NOT NULL OR EXISTS (SELECT 1 FROM api_keys k "
                    "WHERE k.org_id = :org AND k.role <> 'platform_admin')"
                ),
                {"org": org_id},
            )
        ).all()
    if not rows:
        raise Problem(
            404,
            f"no organisation {org_id!r} (no record and no API keys)",
            type_=problem_type("not-found"),
        )
    return _json(_organisation(rows[0]))


@router.get(
    "/keys",
    tags=["keys"],
    summary="Your organisation's API keys (owners): metadata only, never a secret",
    response_model=KeyPage,
)
async def list_keys(
    request: Request,
    after: UUID | None = Query(None, description="The last id of the previous page."),
    limit: int = Query(100, ge=1, le=500),
) -> Response:
    principal = await authorize(request, Permission.MANAGE_KEYS)
    query = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE org_id = :org"
    params: dict[str, Any] = {"org": principal.org_id, "n": limit + 1}
    if after is not None:
        query += (
            " AND (created_at, id) > (SELECT created_at, id FROM api_keys "
            "WHERE id = :after AND org_id = :org)"
        )
        params["after"] = after
    async with request.app.state.engine.connect() as conn:
        rows = (await conn.execute(text(query + " ORDER BY created_at, id LIMIT :n"), params)).all()
    now = datetime.now(UTC)
    infos = [key_info(row) for row in rows[:limit]]
    items = [key_json(info, now) for info in infos if info.role != Role.PLATFORM_ADMIN]
    next_after = str(infos[-1].id) if len(rows) > limit else None
    return _json({"items": items, "next_after": next_after})
