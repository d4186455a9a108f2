"""Our own export format: one workflow as a self-describing JSON document.

::

    {
      "format": "reporunner.workflow",
      "format_version": 1,
      "workflow": {"name", "description", "nodes", "connections", "tags", "settings"},
      "exported": {"workflow_id", "version", "at"}
    }

``workflow`` is the whole definition exactly as stored: nodes with their
parameters, names, positions, retry and error handling; connections with
their outputs; tags; settings. Importing it (``POST /v1/import``) creates a
workflow with that definition, so export, import and export again give the
same document but for ``exported``, which says where and when a document
came from and is never imported. What is not part of a definition is not
exported either: the workflow's id, activation, runs, history, webhook
secrets.

``format_version`` changes only when a reader of version 1 could no longer
read a document right; new optional content keeps the version.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final
from uuid import UUID

FORMAT: Final = "reporunner.workflow"
FORMAT_VERSION: Final = 1


def export_document(
    definition: dict[str, Any], workflow_id: UUID, revision: int, at: datetime
) -> dict[str, Any]:
    """The export document of one revision's ``definition``."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "workflow": definition,
        "exported": {"workflow_id": str(workflow_id), "version": revision, "at": at.isoformat()},
    }
