"""``GET /v1/audit/verify``: recompute the log's hash chain and say whether it holds.

The check walks the whole log (every organisation's events, though it returns
only counts, positions and links), so one runs at a time per process; a second
request meanwhile gets 429 rather than a second full scan.
"""

from __future__ import annotations

import threading

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from infrastructure.auth import Permission
from infrastructure.database import PgTarget
from infrastructure.openapi import problems
from infrastructure.problems import Problem, problem_type
from infrastructure.web import authorize
from projections.audit_chain import VerifyResult, verify_log
from read_api.schemas import AuditVerification

router = APIRouter(prefix="/v1", tags=["audit"])

_verifying = threading.Lock()


def _target(request: Request) -> PgTarget:
    """The database the service runs on."""
    target: PgTarget = request.app.state.pg_target
    return target


@router.get(
    "/audit/verify",
    summary="Verify the log's hash chain (owners and auditors)",
    description="Recomputes the chain over the whole log and compares it with the stored "
    "links and the signed checkpoints. `ok` false names the first bad `position` and a "
    "`problem`: altered, deleted, inserted, rewritten or signature.",
    response_model=AuditVerification,
    responses=problems(403, 429),
)
async def audit_verify(request: Request) -> Response:
    principal = await authorize(request, Permission.READ_AUDIT)
    if principal.project_id is not None:
        # The chain spans every project's events (its counts and positions say
        # how busy the others are): it is the organisation's to verify.
        raise Problem(
            403,
            "a project-scoped key may not verify the whole log: use an organisation-wide key",
            type_=problem_type("forbidden"),
        )
    if not _verifying.acquire(blocking=False):
        raise Problem(
            429,
            "a verification is already running; retry when it has finished",
            type_=problem_type("verify-running"),
            headers={"Retry-After": "10"},
        )
    target, key = _target(request), request.app.state.settings.audit_key

    def verify() -> VerifyResult:
        # Released by the thread itself: a client that hangs up does not stop the scan.
        try:
            return verify_log(target, key)
        finally:
            _verifying.release()

    result = await run_in_threadpool(verify)
    return Response(orjson.dumps(result.as_json()), media_type="application/json")
