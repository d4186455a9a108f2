"""Aggregation over the document views: a MongoDB-style pipeline run as ONE SQL query.

``POST /v1/query/{collection}/aggregate`` with ``{"pipeline": [...]}`` answers
``{"results": [...]}``. The pipeline only ever sees the caller's organisation's
documents (deleted workflows included: filter them with ``$match`` on
``deleted``). Bad pipelines are ``QueryError``s: 400 problems naming the stage.

A run is bounded (``read_api.bounded``): the statement timeout, a row cap on
each ``$unwind`` and on the answer (400 naming the setting), cancellation when
the client leaves, and a per-organisation slot (429 when all are taken).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.responses import Response

from infrastructure.auth import Permission
from infrastructure.cache import cached_json
from infrastructure.database import single_statement
from infrastructure.openapi import problems
from infrastructure.org_slots import OrgSlots
from infrastructure.problems import Problem, problem_type
from infrastructure.web import authorize
from projections.pipeline import PipelineLimits, compile_pipeline, unwind_cap_exceeded
from projections.store import collection_table
from projections.workflows import VERSIONS, WORKFLOWS
from read_api.bounded import until_disconnected
from read_api.routes import PROJECTION_HEADERS, MinPosition, _views_position
from read_api.schemas import AggregateAnswer
from read_api.scope import cache_scope, visible_in

router = APIRouter(prefix="/v1", tags=["queries"])

COLLECTIONS = (WORKFLOWS, VERSIONS)


class AggregateRequest(BaseModel):
    # Any here: compile_pipeline answers 400 naming what is wrong; the document says array.
    pipeline: Any = Field(
        json_schema_extra={"type": "array", "items": {"type": "object"}},
        description="Stages: $match, $group, $sort, $skip, $limit, $count, $project, $unwind.",
        examples=[[{"$unwind": "$tags"}, {"$group": {"_id": "$tags", "n": {"$count": {}}}}]],
    )


@router.post(
    "/query/{collection}/aggregate",
    summary="Run a MongoDB-style aggregation pipeline over a view",
    response_model=AggregateAnswer,
    responses={200: {"headers": PROJECTION_HEADERS}, **problems(400, 404, 429)},
)
async def aggregate(
    collection: Annotated[
        str, Path(json_schema_extra={"enum": list(COLLECTIONS)}, description="The view.")
    ],
    body: AggregateRequest,
    request: Request,
    min_position: MinPosition = None,
) -> Response:
    principal = await authorize(request, Permission.READ_WORKFLOWS)
    if collection not in COLLECTIONS:
        raise Problem(
            404,
            f"unknown collection '{collection}' (one of: {', '.join(COLLECTIONS)})",
            type_=problem_type("not-found"),
        )
    settings = request.app.state.settings
    limits = PipelineLimits(
        max_unwind_rows=settings.query_max_unwind_rows, max_results=settings.query_max_results
    )
    in_scope, scope_params = visible_in(collection, principal.project_id, principal.org_id)
    fragment = compile_pipeline(
        body.pipeline,
        source_sql=(
            f"SELECT data FROM {collection_table(collection)} WHERE org_id = :org AND {in_scope}"
        ),
        source_params={"org": principal.org_id, **scope_params},
        limits=limits,
    )
    position = await _views_position(request, min_position)

    async def run_pipeline() -> dict[str, Any]:
        slots: OrgSlots = request.app.state.pipeline_slots  # per process, per organisation
        with slots.hold(principal.org_id):
            rows = await until_disconnected(request, _fetch(request, fragment.sql, fragment.params))
        if len(rows) > settings.query_max_results:
            raise Problem(
                400,
                f"the pipeline answers more than {settings.query_max_results} documents "
                "(REPORUNNER_QUERY_MAX_RESULTS): add a $limit stage or narrow it with $match",
                type_=problem_type("result-too-large"),
            )
        return {"results": [row[0] for row in rows]}

    return await cached_json(
        request,
        cache_scope(principal.org_id, principal.project_id),
        position,
        run_pipeline,
        body.pipeline,
        max_bytes=settings.query_max_result_bytes,
    )


async def _fetch(request: Request, sql: str, params: dict[str, Any]) -> list[Any]:
    try:
        async with single_statement(request.app.state.read_engine) as conn:
            return list((await conn.execute(text(sql), params)).all())
    except DBAPIError as exc:
        if unwind_cap_exceeded(str(exc.orig)):
            cap = request.app.state.settings.query_max_unwind_rows
            raise Problem(
                400,
                f"a $unwind stage produces more than {cap} documents "
                "(REPORUNNER_QUERY_MAX_UNWIND_ROWS): $match before unwinding, or unwind less",
                type_=problem_type("unwind-too-large"),
            ) from None
        raise
