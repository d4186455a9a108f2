"""Project scope on the write side: what a project-confined key may do to a workflow.

An organisation-wide key (no project) is limited by its role alone. A key
confined to a project sees the workflows of that project and those shared
with it; any other workflow is not found (404), exactly like another
organisation's, so its existence does not leak. A workflow it sees but may
not change (a ``viewer`` share, or moving and sharing, which only its own
project decides) is refused with 403.
"""

from __future__ import annotations

from enum import IntEnum
from uuid import UUID

from commands.errors import CommandError, WorkflowNotFound
from commands.models import CommandContext
from domain.workflow import Workflow


class Access(IntEnum):
    VIEW = 1
    EDIT = 2
    OWN = 3  # the owning project's own decisions: share, unshare


_GRANTED = {"viewer": Access.VIEW, "editor": Access.EDIT, "owner": Access.OWN}


class ProjectAccessDenied(CommandError):
    """A project-confined key sees the workflow but its grant does not cover the command."""

    def __init__(self, workflow_id: UUID, project_id: UUID, granted: str, needed: Access) -> None:
        what = {
            Access.VIEW: "see it",
            Access.EDIT: "change or run it",
            Access.OWN: "share it (only its own project does)",
        }[needed]
        super().__init__(
            f"project {project_id} holds a {granted} grant on workflow {workflow_id}: "
            f"not enough to {what}"
        )
        self.workflow_id = workflow_id


def ensure_access(workflow: Workflow, ctx: CommandContext, needed: Access) -> None:
    """Raise ``WorkflowNotFound`` or ``ProjectAccessDenied`` unless ``ctx`` may act so."""
    if ctx.project_id is None:
        return
    granted = workflow.role_of(ctx.project_id)
    if granted is None:
        raise WorkflowNotFound(workflow.id)
    if _GRANTED[granted] < needed:
        raise ProjectAccessDenied(workflow.id, ctx.project_id, granted, needed)
