"""The write side's commands, their handlers, and the eventsourcing Application."""

from commands.application import WorkflowApplication
from commands.errors import CommandError, IdempotencyKeyReused, VersionConflict, WorkflowNotFound
from commands.handlers import WorkflowCommands, idempotent_workflow_id
from commands.models import CommandContext, CommandResult, CreateWorkflow, UpdateWorkflow

__all__ = [
    "CommandContext",
    "CommandError",
    "CommandResult",
    "CreateWorkflow",
    "IdempotencyKeyReused",
    "UpdateWorkflow",
    "VersionConflict",
    "WorkflowApplication",
    "WorkflowCommands",
    "WorkflowNotFound",
    "idempotent_workflow_id",
]
