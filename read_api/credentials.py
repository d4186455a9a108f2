"""GET /v1/credentials: every role sees credentials' metadata, nobody a secret.

Reads the ``credentials`` table (migration 0015), which the write side keeps
in the same transaction as each Credential event, on the primary: an answer
right after a write already shows it. Keyset-paginated by id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from sqlalchemy import text
from starlette.responses import Response

from infrastructure.auth import Permission
from infrastructure.json_codec import dumps_answer
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type
from infrastructure.web import authorize

router = APIRouter(prefix="/v1", tags=["credentials"])

MAX_PAGE = 100
_COLUMNS = "id, name, type, fingerprint, key_id, created_by, created_at, updated_by, updated_at"


class CredentialInfo(BaseModel):
    """A credential's metadata; the secret is write-only."""

    id: UUID
    name: str
    type: str
    fingerprint: str
    key_id: str
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime
    position: int | None = None


class CredentialPage(BaseModel):
    items: list[CredentialInfo]
    next_cursor: str | None


def _row(row: Any) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "name": row.name,
        "type": row.type,
        "fingerprint": row.fingerprint,
        "key_id": row.key_id,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "updated_by": row.updated_by,
        "updated_at": row.updated_at.isoformat(),
    }


@router.get(
    "/credentials",
    summary="List the organisation's credentials (metadata only), by id",
    response_model=CredentialPage,
    responses=problems(400),
)
async def list_credentials(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 50,
    cursor: Annotated[UUID | None, Query(description="next_cursor of the previous page.")] = None,
) -> Response:
    principal = await authorize(request, Permission.READ_WORKFLOWS)
    async with request.app.state.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    f"SELECT {_COLUMNS} FROM credentials WHERE org_id = :org "
                    "AND (CAST(:after AS uuid) IS NULL OR id > CAST(:after AS uuid)) "
                    "ORDER BY id LIMIT :limit"
                ),
                {"org": principal.org_id, "after": cursor, "limit": limit},
            )
        ).all()
    items = [_row(row) for row in rows]
    next_cursor = items[-1]["id"] if len(items) == limit else None
    return Response(
        dumps_answer({"items": items, "next_cursor": next_cursor}), media_type="application/json"
    )


@router.get(
    "/credentials/{credential_id}",
    summary="One credential's metadata",
    response_model=CredentialInfo,
    responses=problems(400, 404),
)
async def get_credential(credential_id: UUID, request: Request) -> Response:
    principal = await authorize(request, Permission.READ_WORKFLOWS)
    async with request.app.state.engine.connect() as conn:
        row = (
            await conn.execute(
                text(f"SELECT {_COLUMNS} FROM credentials WHERE org_id = :org AND id = :id"),
                {"org": principal.org_id, "id": credential_id},
            )
        ).first()
    if row is None:
        raise Problem(404, f"credential {credential_id} not found", type_=problem_type("not-found"))
    return Response(dumps_answer(_row(row)), media_type="application/json")
