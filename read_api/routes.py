"""Query endpoints: workflows and their versions, from the document views.

Read-your-writes: a client that sends ``X-Min-Position: N`` (or
``?min_position=N``), N being the ``position`` a command returned, waits
(bounded) until every view has applied N. Every response (a 404 too) says how
far the views are in ``X-Projection-Position``.

The views are read from ``app.state.read_engine``: the read replica when
``REPORUNNER_READ_DATABASE_URL`` names one, else the primary. A view's
``projection_tracking`` row is written in the same transaction as the view, so
it replicates with it: the replica's position is exactly what the replica's
views hold, and waiting on it is waiting for the replica to catch up.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from infrastructure.auth import Permission, Principal
from infrastructure.json_codec import dumps_answer
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type
from infrastructure.web import authorize
from projections.dead_letters import STALE
from projections.workflows import VERSIONS, WORKFLOWS
from read_api.bounded import until_disconnected
from read_api.history import workflow_then
from read_api.params import MAX_POSITION, parse_position
from read_api.queries import (
    MAX_LIMIT,
    SORT_PATTERN,
    BadQuery,
    get_document,
    list_documents,
    parse_sort,
    projection_position,
    wait_for_position,
)
from read_api.schemas import VersionDocument, VersionPage, WorkflowDocument, WorkflowPage

router = APIRouter(prefix="/v1", tags=["queries"])

# The projections whose views these endpoints read (read-your-writes waits for
# them). Each group of endpoints waits only for the views it reads, so a slow
# projection never delays the others' readers.
VIEWS = ["workflows"]
EXECUTION_VIEWS = ["executions"]

_ETAG = {"description": 'The version, as an ETag: "3".', "schema": {"type": "string"}}
_MIN_POSITION_DOC = {
    "name": "X-Min-Position",
    "in": "header",
    "required": False,
    "description": "Wait (bounded) until the views have applied this log position, "
    "e.g. the position a command returned: read your own writes.",
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_POSITION},
}
# Answer header every view read carries.
PROJECTION_HEADERS = {
    "X-Projection-Position": {
        "description": "How far the views have applied the log.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}

# OpenAPI links from a page's first item to what its id leads to.
_FIRST_WORKFLOW = {"workflow_id": "$response.body#/items/0/id"}
_WORKFLOW_PAGE_LINKS = {
    "GetWorkflow": {"operationId": "get_workflow", "parameters": _FIRST_WORKFLOW},
    "Versions": {"operationId": "list_versions", "parameters": _FIRST_WORKFLOW},
    "History": {"operationId": "workflow_history", "parameters": _FIRST_WORKFLOW},
    "Executions": {"operationId": "list_workflow_executions", "parameters": _FIRST_WORKFLOW},
}
_FIRST_EXECUTION = {"execution_id": "$response.body#/items/0/id"}
EXECUTION_PAGE_LINKS = {
    "GetExecution": {"operationId": "get_execution", "parameters": _FIRST_EXECUTION},
    "Retry": {"operationId": "retry_execution", "parameters": _FIRST_EXECUTION},
}

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")]
Cursor = Annotated[
    str | None,
    Query(
        description="next_cursor of the previous page, unchanged (anything else is 400).",
        # Documented, not enforced here: decode_cursor answers 400 naming the cursor.
        json_schema_extra={"maxLength": 4096, "pattern": "^[A-Za-z0-9_-]+$"},
    ),
]
MinPosition = Annotated[
    int | None, Query(ge=0, le=MAX_POSITION, description="Same as X-Min-Position.")
]


async def _reader(request: Request) -> Principal:
    return await authorize(request, Permission.READ_WORKFLOWS)


async def _views_position(
    request: Request, min_position: int | None, views: list[str] = VIEWS
) -> int:
    """The ``views``' position, after waiting for the one the client asked for."""
    engine = request.app.state.read_engine
    raw = request.headers.get("x-min-position")
    wanted = min_position
    if raw is not None:
        wanted = parse_position("X-Min-Position", raw)
    if wanted is None:
        return await projection_position(engine, views)
    reached, position = await wait_for_position(
        engine, views, wanted, request.app.state.settings.min_position_wait_s
    )
    if not reached:
        raise Problem(
            503,
            f"the views have applied the log up to position {position}, not yet {wanted}; "
            "retry shortly",
            type_=problem_type("not-yet-consistent"),
            headers={"Retry-After": "1", "X-Projection-Position": str(position)},
            current_position=position,
        )
    return position


def _json(body: Any, position: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        dumps_answer(body),
        media_type="application/json",
        headers={"X-Projection-Position": str(position), **(headers or {})},
    )


def _parse_filter(raw: str | None) -> Any:
    if raw is None or raw == "":
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadQuery(f"filter is not valid JSON: {exc}") from None


@router.get(
    "/workflows",
    summary="List workflows (Mongo-style filter, keyset pagination)",
    response_model=WorkflowPage,
    responses={
        200: {"headers": PROJECTION_HEADERS, "links": _WORKFLOW_PAGE_LINKS},
        **problems(400),
    },
    openapi_extra={"parameters": [_MIN_POSITION_DOC]},
)
async def list_workflows(
    request: Request,
    filter: Annotated[
        str | None,
        Query(
            description="Mongo-style JSON filter, e.g. "
            '{"tags": "billing", "nodes.type": "http_request"}. '
            "Deleted workflows are hidden unless the filter mentions `deleted`."
        ),
    ] = None,
    sort: Annotated[
        str | None,
        Query(
            description="Comma-separated fields, '-' for descending.",
            json_schema_extra={"pattern": SORT_PATTERN},  # parse_sort answers 400
        ),
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    min_position: MinPosition = None,
) -> Response:
    principal = await _reader(request)
    position = await _views_position(request, min_position)
    page = await until_disconnected(
        request,
        list_documents(
            request.app.state.read_engine,
            WORKFLOWS,
            principal.org_id,
            filter_=_parse_filter(filter),
            sort=parse_sort(sort, "-created_at"),
            limit=limit,
            cursor=cursor,
            hide_deleted=True,
        ),
    )
    return _json({"items": page.items, "next_cursor": page.next_cursor}, position)


@router.get(
    "/workflows/{workflow_id}",
    summary="One workflow, as the views have it; or exactly as it was at a version or time",
    response_model=WorkflowDocument,
    responses={200: {"headers": {"ETag": _ETAG}}, **problems(400, 404)},
    openapi_extra={"parameters": [_MIN_POSITION_DOC]},
)
async def get_workflow(
    workflow_id: UUID,
    request: Request,
    min_position: MinPosition = None,
    version: Annotated[
        int | None,
        Query(
            ge=1, le=MAX_POSITION, description="As this version (revision) made it (from the log)."
        ),
    ] = None,
    as_of: Annotated[
        str | None,
        Query(
            description="As it was at this instant, with an offset (from the log).",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
) -> Response:
    principal = await _reader(request)
    if version is not None or as_of is not None:
        # Time travel reads the log itself, which is never behind; a bad header is still 400.
        raw = request.headers.get("x-min-position")
        if raw is not None:
            parse_position("X-Min-Position", raw)
        return await workflow_then(request, workflow_id, principal.org_id, version, as_of)
    position = await _views_position(request, min_position)
    document = await get_document(
        request.app.state.read_engine, WORKFLOWS, principal.org_id, str(workflow_id)
    )
    if document is None:
        raise _not_found(workflow_id, position)
    return _json(document, position, {"ETag": f'"{document["version"]}"', **stale_header(document)})


@router.get(
    "/workflows/{workflow_id}/versions",
    summary="A workflow's versions, oldest first (keyset pagination)",
    response_model=VersionPage,
    responses={200: {"headers": PROJECTION_HEADERS}, **problems(400, 404)},
    openapi_extra={"parameters": [_MIN_POSITION_DOC]},
)
async def list_versions(
    workflow_id: UUID,
    request: Request,
    limit: Limit = 50,
    cursor: Cursor = None,
    min_position: MinPosition = None,
) -> Response:
    principal = await _reader(request)
    position = await _views_position(request, min_position)
    engine = request.app.state.read_engine
    if await get_document(engine, WORKFLOWS, principal.org_id, str(workflow_id)) is None:
        raise _not_found(workflow_id, position)
    page = await list_documents(
        engine,
        VERSIONS,
        principal.org_id,
        filter_={"workflow_id": str(workflow_id)},
        sort=parse_sort("version", "version"),
        limit=limit,
        cursor=cursor,
    )
    return _json({"items": page.items, "next_cursor": page.next_cursor}, position)


@router.get(
    "/workflows/{workflow_id}/versions/{version}",
    summary="A workflow exactly as it was at one version",
    response_model=VersionDocument,
    responses={200: {"headers": {"ETag": _ETAG, **PROJECTION_HEADERS}}, **problems(400, 404)},
    openapi_extra={"parameters": [_MIN_POSITION_DOC]},
)
async def get_version(
    workflow_id: UUID,
    version: Annotated[int, Path(ge=1, le=MAX_POSITION)],
    request: Request,
    min_position: MinPosition = None,
) -> Response:
    principal = await _reader(request)
    position = await _views_position(request, min_position)
    document = await get_document(
        request.app.state.read_engine, VERSIONS, principal.org_id, f"{workflow_id}:{version}"
    )
    if document is None:
        raise Problem(
            404,
            f"workflow {workflow_id} has no version {version}",
            type_=problem_type("not-found"),
            headers=position_header(position),
        )
    return _json(document, position, {"ETag": f'"{version}"'})


def stale_header(document: dict[str, Any]) -> dict[str, str]:
    """``X-Stale: true`` on a document that misses an event (``_stale`` says which)."""
    return {"X-Stale": "true"} if STALE in document else {}


def _not_found(workflow_id: UUID, position: int) -> Problem:
    # As of the views' position: on a lagging replica a 404 may be a write not there yet.
    return Problem(
        404,
        f"workflow {workflow_id} not found",
        type_=problem_type("not-found"),
        headers=position_header(position),
    )


def position_header(position: int) -> dict[str, str]:
    return {"X-Projection-Position": str(position)}
