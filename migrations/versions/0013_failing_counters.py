"""An index of the counter documents that count a failure, for the top failing workflows.

Revision ID: 0013_failing_counters
Revises: 0012_dashboards
Create Date: 2026-12-02

The dashboard summary's "top failing workflows" used to sum every
per-workflow counter of the period: in an organisation with many workflows
that is one document per workflow and hour, tens of thousands for a day.
Only the documents that count a failed or crashed run can rank a workflow,
so this partial index holds just those (a few per cent of them); the
summary then reads the period's totals of the few top workflows alone.
The predicate is ``read_api.executions.FAILING_COUNTER``'s, word for word,
so the planner can use the index.
"""

from alembic import op

revision = "0013_failing_counters"
down_revision = "0012_dashboards"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX doc_execution_stats_failing ON doc_execution_stats "
        "(org_id, (data->>'granularity'), created) "
        "WHERE data->>'workflow_id' IS NOT NULL "
        "AND (data->>'failed')::bigint + (data->>'crashed')::bigint > 0"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS doc_execution_stats_failing")
