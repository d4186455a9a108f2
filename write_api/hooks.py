"""``METHOD /hooks/{org}/{path}``: a webhook call starts a run of the workflow holding it.

No API key: the hook's own auth (none, a header token, an HMAC signature) decides. The
body is read under the service's body limit (413) and must keep the value
contract (422); an unknown or inactive hook is 404, a bad token or
signature 401, and neither starts anything. ``response`` decides the answer:
``immediately`` 202 with the execution id, ``no_content`` 204, and
``when_finished`` the run's output as a sync run answers it (bounded by
its timeout, through the sync-run bulkhead).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from commands.webhooks import Delivery, HookDeliveries
from domain.webhooks import METHODS
from infrastructure.json_codec import dumps_answer
from infrastructure.openapi import problems
from infrastructure.tracing import current_traceparent
from infrastructure.web import org_policy
from write_api.bulkhead import SyncRunBulkhead
from write_api.limits import execution_allowance, sync_run_limit
from write_api.routes import execution_response
from write_api.schemas import ExecutionAnswer, HookAccepted

router = APIRouter(tags=["webhooks"])

_HOOK_HEADERS = {
    "Location": {"description": "The execution's URL.", "schema": {"type": "string"}},
    "X-Log-Position": {
        "description": "The log position of the run's last event.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The run finished (response: when_finished): its output",
        "model": ExecutionAnswer,
        "headers": _HOOK_HEADERS,
    },
    202: {"description": "The run is queued", "model": HookAccepted, "headers": _HOOK_HEADERS},
    204: {"description": "The run is queued (response: no_content)", "headers": _HOOK_HEADERS},
    # 401: the hook's token or signature is wrong; 404: no active hook there; 409: its
    # workflow is inactive; 422: the body is not what its content type says; 429: too many
    # sync runs; 503: the workflow is busy or the run's answer could not be read.
    # 403: the organisation is suspended.
    **problems(401, 403, 404, 409, 413, 422, 429, 503),
}
# The body is read raw (any content type); the document names the ones a run understands.
_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "description": "Whatever the caller sends: JSON, a form, or text; the run's first item "
        "holds it with the headers and query.",
        "content": {
            "application/json": {"schema": {}},
            "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    },
}


async def call_hook(org_id: str, path: str, request: Request) -> Response:
    delivery = Delivery(
        org_id=org_id,
        method=request.method,
        path=path,
        headers={name.lower(): value for name, value in request.headers.items()},
        query=dict(request.query_params),
        body=await request.body(),
        correlation_id=request.state.request_id,
        traceparent=current_traceparent(),
    )
    hooks: HookDeliveries = request.app.state.hook_deliveries
    bulkhead: SyncRunBulkhead = request.app.state.sync_runs
    # A suspended organisation's hooks refuse too (403), before anything is looked up.
    policy = await org_policy(request, org_id)
    policy.ensure_active()
    limit = await sync_run_limit(request, org_id)
    async with execution_allowance(request, org_id, keyed=False):
        if hooks.probably_when_finished(delivery) and bulkhead.slots.has_room(org_id, limit):
            # A sync run most likely (this route's last answer here): look it up
            # and run it in one hop, on the sync-run pool. With no room the
            # two-hop path below answers as ever (404 or 401 before 429).
            accepted, started = await bulkhead.run(org_id, hooks.deliver, delivery, limit=limit)
        else:
            accepted = await run_in_threadpool(hooks.accept, delivery)
            if accepted.response == "when_finished":
                # Its own pool, as for the API's sync runs: long runs never hold
                # the command threads.
                started = await bulkhead.run(org_id, hooks.start, accepted, limit=limit)
            else:
                started = await run_in_threadpool(hooks.start, accepted)
    if accepted.response == "when_finished":
        return execution_response(started)
    execution_id = str(started.execution_id)
    headers = {
        "Location": f"/v1/executions/{execution_id}",
        "X-Log-Position": str(started.position),
    }
    if accepted.response == "no_content":
        return Response(status_code=204, headers=headers)
    body = {"execution_id": execution_id, "status": started.status}
    return Response(
        dumps_answer(body), status_code=202, headers=headers, media_type="application/json"
    )


# One route per method, each its own OpenAPI operation.
for _method in METHODS:
    router.add_api_route(
        "/hooks/{org_id}/{path:path}",
        call_hook,
        methods=[_method],
        operation_id=f"call_hook_{_method.lower()}",
        summary=f"Call an active workflow's {_method} webhook: 202, 204, or 200 with the output",
        description="No API key: the hook's own auth (none, a header token, an HMAC "
        "signature) decides. `response` on the trigger node picks the answer.",
        responses=_RESPONSES,
        openapi_extra={"security": [], **(_BODY if _method in ("POST", "PUT", "PATCH") else {})},
    )
