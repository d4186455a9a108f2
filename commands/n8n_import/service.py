"""Create a workflow from an n8n export: the one code path of the API and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import structlog

from commands.handlers import WorkflowCommands
from commands.models import CommandContext, CommandResult, CreateWorkflow
from commands.n8n_import.translate import (
    MAX_EXPORT_BYTES,
    Translation,
    translate_export,
)

__all__ = ["ExportNotJson", "ExportTooLarge", "ImportAnswer", "import_n8n", "parse_export"]

log = structlog.get_logger(__name__)


class ExportTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"the export is {size} bytes, at most {MAX_EXPORT_BYTES} allowed")


class ExportNotJson(Exception):
    """The bytes are not JSON at all."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_export(raw: bytes) -> Any:
    """The export's JSON; raises ``ExportTooLarge`` or ``ExportNotJson``."""
    if len(raw) > MAX_EXPORT_BYTES:
        raise ExportTooLarge(len(raw))
    try:
        # Python's json: big integers stay exact (the value contract names
        # them later); NaN and Infinity are refused here.
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ExportNotJson(f"the export is not JSON: {exc}") from None


@dataclass(frozen=True)
class ImportAnswer:
    result: CommandResult
    translation: Translation

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.result.workflow_id),
            "version": self.result.version,
            "position": self.result.position,
            "name": self.translation.definition["name"],
            "placeholders": [node.as_json() for node in self.translation.placeholders],
            "notes": self.translation.notes,
            "dropped_sticky_notes": self.translation.dropped,
        }


def import_n8n(
    commands: WorkflowCommands,
    document: Any,
    ctx: CommandContext,
    *,
    partial: bool = False,
    project_id: UUID | None = None,
) -> ImportAnswer:
    """Translate ``document`` and create the workflow with the ordinary create command.

    Raises ``ExportInvalid``, ``LoopRefused``, ``ImportRefused`` (nothing is
    created) or whatever creating raises (``WorkflowInvalid`` among them).
    """
    translation = translate_export(document, partial=partial)
    payload = dict(translation.definition)
    if project_id is not None:
        payload["project_id"] = project_id
    command = CreateWorkflow.model_validate(payload)
    result = commands.create(command, ctx)
    log.info(
        "n8n_import",
        workflow_id=str(result.workflow_id),
        nodes=len(payload["nodes"]),
        placeholders=len(translation.placeholders),
        partial=partial,
    )
    return ImportAnswer(result, translation)
