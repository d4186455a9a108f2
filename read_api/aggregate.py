"""Aggregation over the document views: a MongoDB-style pipeline run as ONE SQL query.

``POST /v1/query/{collection}/aggregate`` with ``{"pipeline": [...]}`` answers
``{"results": [...]}``. The pipeline only ever sees the caller's organisation's
documents (deleted workflows included: filter them with ``$match`` on
``deleted``). Bad pipelines are ``QueryError``s: 400 problems naming the stage.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import text
from starlette.responses import Response

from infrastructure.auth import Permission
from infrastructure.cache import cached_json
from infrastructure.problems import Problem, problem_type
from infrastructure.web import authorize
from projections.pipeline import compile_pipeline
from projections.store import collection_table
from projections.workflows import VERSIONS, WORKFLOWS
from read_api.routes import MinPosition, _views_position

router = APIRouter(prefix="/v1", tags=["queries"])

COLLECTIONS = (WORKFLOWS, VERSIONS)
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


class AggregateRequest(BaseModel):
    pipeline: Any = Field(
        description="Stages: $match, $group, $sort, $skip, $limit, $count, $project, $unwind.",
        examples=[[{"$unwind": "$tags"}, {"$group": {"_id": "$tags", "n": {"$count": {}}}}]],
    )


@router.post(
    "/query/{collection}/aggregate",
    summary="Run a MongoDB-style aggregation pipeline over a view",
    responses={400: _PROBLEM, 404: _PROBLEM, 503: _PROBLEM},
)
async def aggregate(
    collection: str,
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
    fragment = compile_pipeline(
        body.pipeline,
        source_sql=f"SELECT data FROM {collection_table(collection)} WHERE org_id = :org",
        source_params={"org": principal.org_id},
    )
    position = await _views_position(request, min_position)

    async def run_pipeline() -> dict[str, Any]:
        async with request.app.state.engine.connect() as conn:
            rows = (await conn.execute(text(fragment.sql), fragment.params)).all()
        return {"results": [row[0] for row in rows]}

    return await cached_json(request, principal.org_id, position, run_pipeline, body.pipeline)
