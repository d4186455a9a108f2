"""``GET /v1/workflows/{id}/export``: a workflow in our own format, from the log.

Read from the event store (as history and time travel are), so it is exact:
the definition as its revision made it, never a view's copy of it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from commands.errors import WorkflowNotFound
from commands.handlers import WorkflowCommands
from domain.transfer import export_document
from infrastructure.auth import Permission
from infrastructure.json_codec import dumps_answer
from infrastructure.openapi import problems
from infrastructure.web import authorize
from read_api.params import MAX_POSITION
from read_api.template_schemas import ExportDocument

router = APIRouter(prefix="/v1", tags=["workflows"])


@router.get(
    "/workflows/{workflow_id}/export",
    summary="A workflow in our own format, for POST /v1/import (here or elsewhere)",
    response_model=ExportDocument,
    responses={
        200: {"headers": {"ETag": {"schema": {"type": "string"}}}},
        **problems(400, 404, 410),
    },
)
async def export_workflow(
    workflow_id: UUID,
    request: Request,
    version: Annotated[
        int | None,
        Query(
            ge=1, le=MAX_POSITION, description="This version (revision); the latest if left out."
        ),
    ] = None,
) -> Response:
    principal = await authorize(request, Permission.READ_WORKFLOWS)
    commands: WorkflowCommands = request.app.state.workflow_commands

    def read() -> dict[str, object]:
        workflow = commands.get(workflow_id, principal.org_id, revision=version)
        if principal.project_id is not None and workflow.role_of(principal.project_id) is None:
            raise WorkflowNotFound(workflow_id)  # another project's: as if it did not exist
        if version is None:
            workflow.ensure_not_deleted()  # its earlier versions are still exportable
        return export_document(
            workflow.definition(), workflow.id, workflow.revision, datetime.now(UTC)
        )

    document = await run_in_threadpool(read)
    exported = document["exported"]
    assert isinstance(exported, dict)
    return Response(
        dumps_answer(document),
        media_type="application/json",
        headers={"ETag": f'"{exported["version"]}"'},
    )
