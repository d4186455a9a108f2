"""``POST /v1/data-subjects/{subject}/erase``: crypto-shredding of one data subject."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from commands.erasure import DataSubjectErasure, ErasureUnavailable
from commands.models import CommandContext
from domain.data_subjects import MAX_SUBJECT_CHARS
from infrastructure.auth import Permission
from infrastructure.json_codec import dumps_answer
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type
from infrastructure.tracing import current_traceparent
from infrastructure.web import authorize

router = APIRouter(prefix="/v1", tags=["data subjects"])


class ErasureAnswer(BaseModel):
    subject_scope: str = Field(
        description="The keyed digest naming the subject in the key table and the log."
    )
    erased_now: bool = Field(description="False when it was erased before: nothing changed.")
    erased_by: str
    erased_at: datetime
    position: int = Field(ge=1, description="The log position of the Erased event.")
    vacuumed: bool = Field(description="Whether VACUUM data_keys ran after the key's removal.")


Subject = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_SUBJECT_CHARS,
        description="The subject's id as the workflows' settings.data_subject finds it in "
        "the input (a number or boolean as its JSON text).",
    ),
]


@router.post(
    "/data-subjects/{subject}/erase",
    summary="Erase a data subject: destroy their key, so their executions' payloads read erased",
    description="Owners only. Idempotent. Every payload sealed under the subject's key "
    '(inputs, node outputs, outputs, errors) reads as {"$erased": true} from then on, in '
    "the views, the log and exports; counters, the audit chain and replays are unchanged. "
    "New executions naming the subject are refused (409).",
    response_model=ErasureAnswer,
    responses={
        200: {"headers": {"X-Log-Position": {"schema": {"type": "string"}}}},
        **problems(403, 422, 503),  # 422: longer than 255 characters
    },
)
async def erase_data_subject(subject: Subject, request: Request) -> Response:
    # Any string settings.data_subject could have found is a subject (a "/" in
    # one cannot travel in this path: `reporunner erase` takes it).
    principal = await authorize(request, Permission.ERASE_DATA)
    if principal.project_id is not None:
        # A data subject's executions span projects: erasure is the organisation's act.
        raise Problem(
            403,
            "a project-scoped key may not erase a data subject: use an organisation-wide key",
            type_=problem_type("forbidden"),
        )
    erasure: DataSubjectErasure = request.app.state.data_subject_erasure
    context = CommandContext(
        org_id=principal.org_id,
        actor=principal.actor,
        correlation_id=request.state.request_id,
        traceparent=current_traceparent(),
    )
    try:
        result = await run_in_threadpool(erasure.erase, subject, context)
    except ErasureUnavailable as exc:
        raise Problem(503, str(exc), type_=problem_type("erasure-unavailable")) from None
    return Response(
        dumps_answer(result.as_json()),
        headers={"X-Log-Position": str(result.position)},
        media_type="application/json",
    )
