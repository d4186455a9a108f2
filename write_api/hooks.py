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
from write_api.bulkhead import SyncRunBulkhead
from write_api.routes import execution_response

router = APIRouter(tags=["webhooks"])

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The run finished (response: when_finished): its output"},
    202: {"description": "The run is queued"},
    204: {"description": "The run is queued (response: no_content)"},
    401: _PROBLEM,
    404: _PROBLEM,
    413: _PROBLEM,
    422: _PROBLEM,
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
    )
    hooks: HookDeliveries = request.app.state.hook_deliveries
    bulkhead: SyncRunBulkhead = request.app.state.sync_runs
    if hooks.probably_when_finished(delivery) and bulkhead.slots.has_room(org_id):
        # A sync run most likely (this route's last answer here): look it up
        # and run it in one hop, on the sync-run pool. With no room the
        # two-hop path below answers as ever (404 or 401 before 429).
        accepted, started = await bulkhead.run(org_id, hooks.deliver, delivery)
    else:
        accepted = await run_in_threadpool(hooks.accept, delivery)
        if accepted.response == "when_finished":
            # Its own pool, as for the API's sync runs: long runs never hold
            # the command threads.
            started = await bulkhead.run(org_id, hooks.start, accepted)
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
        responses=_RESPONSES,
    )
