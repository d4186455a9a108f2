"""History, time travel and the organisation's log: read from the event store.

These answer from the log itself, not from views, so they are exact and
never behind: ``X-Projection-Position`` does not apply; ``X-Log-Position``
says how far the log was read.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from commands.history import MAX_PAGE, History, HistoryEntry
from domain.workflow import DEFINITION_FIELDS, Workflow
from infrastructure.auth import Permission
from infrastructure.json_codec import dumps_answer
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type
from infrastructure.web import authorize
from read_api.params import MAX_POSITION, parse_instant, parse_position, parse_text
from read_api.schemas import HistoryPage

router = APIRouter(prefix="/v1", tags=["history"])

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")]
_HISTORY_CURSOR = {
    "name": "cursor",
    "in": "query",
    "required": False,
    "description": "next_cursor of the previous page: the version after which to go on.",
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_POSITION},
}
Instant = Annotated[
    str | None,
    Query(description="ISO 8601 with an offset.", json_schema_extra={"format": "date-time"}),
]
# Documented, not enforced here: parse_text answers 400 naming the parameter.
_TEXT: dict[str, Any] = {"maxLength": 1024, "pattern": "^[^\x00]*$"}


def _history(request: Request) -> History:
    return History(request.app.state.workflow_commands.app)


def _page(entries: list[HistoryEntry], limit: int, cursor_of: Any) -> Response:
    next_cursor = str(cursor_of(entries[-1])) if len(entries) == limit else None
    body = {"items": [entry.as_json() for entry in entries], "next_cursor": next_cursor}
    return Response(dumps_answer(body), media_type="application/json")


@router.get(
    "/workflows/{workflow_id}/history",
    summary="Every event of a workflow, with a JSON Patch of what each changed",
    response_model=HistoryPage,
    responses=problems(400, 404),
    openapi_extra={"parameters": [_HISTORY_CURSOR]},
)
async def workflow_history(
    workflow_id: UUID,
    request: Request,
    limit: Limit = 100,
    # Parsed by parse_position (400 naming it), documented as the integer it is.
    cursor: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> Response:
    principal = await authorize(request, Permission.READ_WORKFLOWS)
    after = 0 if cursor is None else parse_position("cursor", cursor)
    entries = await run_in_threadpool(
        _history(request).workflow_history,
        workflow_id,
        principal.org_id,
        after,
        limit,
        principal.project_id,
    )
    return _page(entries, limit, lambda entry: entry.version)


@router.get(
    "/audit/events",
    summary="The organisation's events in log order (owners and auditors)",
    response_model=HistoryPage,
    responses=problems(400),
)
async def audit_events(
    request: Request,
    after_position: Annotated[int, Query(ge=0, le=MAX_POSITION)] = 0,
    limit: Limit = 100,
    type: Annotated[
        str | None, Query(json_schema_extra=_TEXT, description="e.g. Workflow.Updated")
    ] = None,
    actor: Annotated[str | None, Query(json_schema_extra=_TEXT)] = None,
    aggregate_id: UUID | None = None,
    since: Instant = None,
    until: Instant = None,
) -> Response:
    principal = await authorize(request, Permission.READ_AUDIT)
    entries = await run_in_threadpool(
        lambda: _history(request).org_events(
            principal.org_id,
            after_position=after_position,
            limit=limit,
            type_=None if type is None else parse_text("type", type),
            actor=None if actor is None else parse_text("actor", actor),
            aggregate_id=aggregate_id,
            since=None if since is None else parse_instant("since", since),
            until=None if until is None else parse_instant("until", until),
            project_id=principal.project_id,
        )
    )
    return _page(entries, limit, lambda entry: entry.position)


async def workflow_then(
    request: Request,
    workflow_id: UUID,
    org_id: str,
    version: int | None,
    as_of: str | None,
    project_id: UUID | None = None,
) -> Response:
    """``GET /v1/workflows/{id}?version=N|as_of=T``: the workflow exactly as it was.

    ``version`` is a revision, as everywhere a client sees a workflow's version.
    """
    if version is not None and as_of is not None:
        raise Problem(400, "give version or as_of, not both", type_=problem_type("bad-query"))
    instant = parse_instant("as_of", as_of) if as_of is not None else None
    workflow = await run_in_threadpool(
        lambda: _history(request).workflow_as_of(
            workflow_id, org_id, revision=version, as_of=instant, project_id=project_id
        )
    )
    return Response(
        dumps_answer(workflow_document(workflow)),
        media_type="application/json",
        headers={"ETag": f'"{workflow.revision}"'},
    )


def workflow_document(workflow: Workflow) -> dict[str, Any]:
    return {
        "id": str(workflow.id),
        **{name: getattr(workflow, name) for name in DEFINITION_FIELDS},
        "version": workflow.revision,
        "deleted": workflow.deleted,
        "runs": workflow.runs,
        "created_at": workflow.created_on.isoformat(),
        "created_by": workflow.created_by,
        "updated_at": workflow.modified_on.isoformat(),
        "updated_by": workflow.updated_by,
        "project_id": workflow.project_id,
    }
