"""Project scope on the read side: the SQL that confines a query to what a key's project sees.

A key confined to a project sees the workflows of that project and those
another project shared with it; everything else of its organisation
(executions, versions, counters, events) is seen only through those
workflows. Every read of a view adds ``visible(...)`` beside its ``org_id``
condition, with the workflow id the rows carry: the workflows view is the
one place membership is kept (``project_id`` and ``shares`` in each
workflow's document), so a move or a share shows in every read at once.

An organisation-wide key gets ``TRUE``: the organisation condition alone.
A collection with no known workflow id column fails closed (``KeyError``),
so a new view cannot be read by a scoped key without a decision here.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from projections.executions import EXECUTIONS, STATS
from projections.store import collection_table
from projections.workflows import VERSIONS, WORKFLOWS

# Where each view's rows name their workflow (SQL over the view's own columns).
WORKFLOW_ID_OF: dict[str, str] = {
    WORKFLOWS: "_id",
    VERSIONS: "data->>'workflow_id'",
    EXECUTIONS: "data->>'workflow_id'",
    STATS: "data->>'workflow_id'",
}

_VISIBLE = (
    "{expr} IN (SELECT v._id FROM {workflows} v WHERE v.org_id = :scope_org "
    "AND (v.data->>'project_id' = :scope_project "
    "OR v.data->'shares'->>CAST(:scope_project AS text) IS NOT NULL))"
)


def visible(
    project_id: UUID | None, org_id: str, workflow_id_sql: str
) -> tuple[str, dict[str, Any]]:
    """(SQL, params): true for rows whose workflow ``workflow_id_sql`` the project sees."""
    if project_id is None:
        return "TRUE", {}
    sql = _VISIBLE.format(expr=workflow_id_sql, workflows=collection_table(WORKFLOWS))
    return sql, {"scope_org": org_id, "scope_project": str(project_id)}


def visible_in(collection: str, project_id: UUID | None, org_id: str) -> tuple[str, dict[str, Any]]:
    """``visible`` for the rows of ``collection`` (``KeyError`` for a view without a workflow)."""
    if project_id is None:
        return "TRUE", {}
    return visible(project_id, org_id, WORKFLOW_ID_OF[collection])


def cache_scope(org_id: str, project_id: UUID | None) -> str:
    """The cache partition of an answer: the organisation, and the project if confined."""
    return org_id if project_id is None else f"{org_id}/{project_id}"
