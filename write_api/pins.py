"""``POST`` and ``DELETE /v1/executions/{id}/pin``: keep a finished execution past retention.

Owners and editors (the ``workflows:execute`` permission, as for cancelling
and retrying). Both are idempotent: pinning a pinned execution (or unpinning
an unpinned one) records nothing and answers the same 200.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from commands.models import CommandContext
from commands.pins import PinCommands, PinResult
from domain.errors import ExecutionExpired, ExecutionNotFinished
from infrastructure.auth import Permission
from infrastructure.json_codec import dumps_answer
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type
from infrastructure.tracing import current_traceparent
from infrastructure.web import authorize

router = APIRouter(prefix="/v1", tags=["executions"])


class PinAnswer(BaseModel):
    execution_id: UUID
    pinned: bool = Field(description="Whether retention keeps it now.")
    changed: bool = Field(description="False when it already was (or was not) pinned.")
    position: int = Field(ge=0, description="Send as X-Min-Position to read your own write.")


_HEADERS = {
    "X-Log-Position": {
        "description": "The log position of the execution's last event.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
# 404: no such execution in the organisation; 409: it has not finished;
# 410: retention already took it; 422: the id is not a UUID.
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"headers": _HEADERS},
    **problems(403, 404, 409, 410, 422),
}


def _pins(request: Request) -> PinCommands:
    return request.app.state.pin_commands  # type: ignore[no-any-return]


async def _context(request: Request) -> CommandContext:
    principal = await authorize(request, Permission.EXECUTE_WORKFLOWS)
    return CommandContext(
        org_id=principal.org_id,
        actor=principal.actor,
        correlation_id=request.state.request_id,
        traceparent=current_traceparent(),
        project_id=principal.project_id,
    )


def _response(result: PinResult) -> Response:
    body = {
        "execution_id": str(result.execution_id),
        "pinned": result.pinned,
        "changed": result.changed,
        "position": result.position,
    }
    return Response(
        dumps_answer(body),
        headers={"X-Log-Position": str(result.position)},
        media_type="application/json",
    )


@router.post(
    "/executions/{execution_id}/pin",
    summary="Pin a finished execution: retention keeps its document and payload",
    response_model=PinAnswer,
    responses=_RESPONSES,
    operation_id="pin_execution",
)
async def pin_execution(execution_id: UUID, request: Request) -> Response:
    context = await _context(request)
    return _response(await run_in_threadpool(_pins(request).pin, execution_id, context))


@router.delete(
    "/executions/{execution_id}/pin",
    summary="Unpin an execution: retention takes it again once past its window",
    response_model=PinAnswer,
    responses=_RESPONSES,
    operation_id="unpin_execution",
)
async def unpin_execution(execution_id: UUID, request: Request) -> Response:
    context = await _context(request)
    return _response(await run_in_threadpool(_pins(request).unpin, execution_id, context))


def _not_finished(exc: ExecutionNotFinished) -> Problem:
    return Problem(
        409, str(exc), type_=problem_type("execution-not-finished"), status_now=exc.status
    )


def _expired(exc: ExecutionExpired) -> Problem:
    return Problem(410, str(exc), type_=problem_type("execution-expired"))


PIN_PROBLEMS: dict[type[Exception], Any] = {
    ExecutionNotFinished: _not_finished,
    ExecutionExpired: _expired,
}
