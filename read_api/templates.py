"""Template queries: the catalogue an organisation sees (its own and the public ones).

Read from the ``templates`` table, which each template command writes in the
same transaction as its event (``commands/templates.py``): never behind the
log, so no ``X-Min-Position`` applies. Lists walk newest first by keyset
(published_at, id); ``q`` searches name and description (case-insensitive
substring), bounded in length, and every query runs under the engine's
statement timeout.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Request
from sqlalchemy import text
from starlette.responses import Response

from infrastructure.auth import Permission
from infrastructure.json_codec import dumps_answer
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type
from infrastructure.web import authorize
from read_api.bounded import until_disconnected
from read_api.params import CursorKey, decode_cursor, encode_cursor, parse_text
from read_api.template_schemas import TemplateDocument, TemplatePage

router = APIRouter(prefix="/v1", tags=["templates"])

MAX_TEMPLATE_PAGE = 100
MAX_QUERY_CHARS = 200
_FIRST_TEMPLATE = {"template_id": "$response.body#/items/0/id"}
_PAGE_LINKS = {
    "GetTemplate": {"operationId": "get_template", "parameters": _FIRST_TEMPLATE},
    "Instantiate": {"operationId": "instantiate_template", "parameters": _FIRST_TEMPLATE},
}


@router.get(
    "/templates",
    summary="Templates this organisation may use: its own and the public ones (newest first)",
    response_model=TemplatePage,
    responses={200: {"links": _PAGE_LINKS}, **problems(400)},
)
async def list_templates(
    request: Request,
    q: Annotated[
        str | None,
        Query(
            description="Words to find in the name or description (case-insensitive).",
            json_schema_extra={"maxLength": MAX_QUERY_CHARS, "pattern": "^[^\x00]*$"},
        ),
    ] = None,
    visibility: Annotated[
        Literal["organisation", "public"] | None,
        Query(description="Only templates of this visibility."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_TEMPLATE_PAGE, description="Page size.")] = 50,
    cursor: Annotated[
        str | None,
        Query(
            description="next_cursor of the previous page, unchanged.",
            json_schema_extra={"maxLength": 4096, "pattern": "^[A-Za-z0-9_-]+$"},
        ),
    ] = None,
) -> Response:
    principal = await authorize(request, Permission.READ_WORKFLOWS)
    where = [
        "unpublished_at IS NULL",
        "(org_id = :org OR visibility = 'public')",
    ]
    params: dict[str, Any] = {"org": principal.org_id, "limit": limit + 1}
    if visibility is not None:
        where.append("visibility = :visibility")
        params["visibility"] = visibility
    if q is not None and q.strip():
        if len(q) > MAX_QUERY_CHARS:
            raise Problem(
                400,
                f"q must be at most {MAX_QUERY_CHARS} characters",
                type_=problem_type("bad-parameter"),
            )
        words = parse_text("q", q).split()
        for index, word in enumerate(words[:10]):
            where.append(
                f"(name ILIKE :word{index} ESCAPE '\\' OR description ILIKE :word{index} "
                "ESCAPE '\\')"
            )
            params[f"word{index}"] = "%" + _escape_like(word) + "%"
    if cursor is not None:
        (after_at,), after_id = decode_cursor(cursor, [CursorKey.INSTANT])
        where.append("(published_at, template_id) < (:after_at, CAST(:after_id AS uuid))")
        params |= {"after_at": after_at, "after_id": _cursor_uuid(after_id)}
    query = text(
        "SELECT template_id, summary, published_at FROM templates WHERE "
        + " AND ".join(where)
        + " ORDER BY published_at DESC, template_id DESC LIMIT :limit"
    )

    async def page() -> list[Any]:
        async with request.app.state.read_engine.connect() as conn:
            return list((await conn.execute(query, params)).all())

    rows = await until_disconnected(request, page())
    items = [_summary(row.summary) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor([last.published_at.isoformat(), str(last.template_id)])
    return Response(
        dumps_answer({"items": items, "next_cursor": next_cursor}), media_type="application/json"
    )


@router.get(
    "/templates/{template_id}",
    summary="One template: its parameters and its definition",
    response_model=TemplateDocument,
    responses=problems(400, 404, 410),
)
async def get_template(template_id: UUID, request: Request) -> Response:
    principal = await authorize(request, Permission.READ_WORKFLOWS)
    async with request.app.state.read_engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT summary, definition, unpublished_at FROM templates "
                    "WHERE template_id = :id AND (org_id = :org OR visibility = 'public')"
                ),
                {"id": template_id, "org": principal.org_id},
            )
        ).one_or_none()
    if row is None:
        raise Problem(404, f"template {template_id} not found", type_=problem_type("not-found"))
    if row.unpublished_at is not None:
        raise Problem(
            410,
            f"template {template_id} was unpublished at {row.unpublished_at.isoformat()}",
            type_=problem_type("template-unpublished"),
        )
    document = {**_summary(row.summary), "definition": _json(row.definition)}
    return Response(dumps_answer(document), media_type="application/json")


def _summary(summary: Any) -> dict[str, Any]:
    document: dict[str, Any] = _json(summary)
    return document


def _json(value: Any) -> Any:
    # asyncpg hands jsonb over as text unless a codec is set on the engine.
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _escape_like(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _cursor_uuid(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise Problem(
            400,
            "cursor is not a next_cursor this API returned: pass it back unchanged",
            type_=problem_type("bad-cursor"),
        ) from None
