"""Execution documents gain trigger, retry_of, reused_nodes and retried_by;
their counters gain by_trigger.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

Every execution queued so far is a plain run: the projection now writes
``trigger: "manual"`` and empty retry fields for Queued events without them,
so documents written before it get the same fields here, in place. The view
then equals its rebuild (``replay --check``) and the list filter
``{"trigger": "manual"}`` finds old executions too, with no rebuild. Each
counter document counted only manual runs so far: ``by_trigger`` says so.
(Issue 12's other items may add a migration too; the integrator chains them.)
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        UPDATE doc_executions
        SET data = data || '{"trigger": "manual", "retry_of": null,
                              "reused_nodes": [], "retried_by": []}'::jsonb
        WHERE NOT data ? 'trigger'
        """
    )
    op.execute(
        """
        UPDATE doc_execution_stats
        SET data = data || jsonb_build_object(
            'by_trigger',
            CASE WHEN (data->>'executions')::bigint > 0
                 THEN jsonb_build_object('manual', (data->>'executions')::bigint)
                 ELSE '{}'::jsonb END)
        WHERE NOT data ? 'by_trigger'
        """
    )


def downgrade() -> None:
    op.execute(
        "UPDATE doc_executions "
        "SET data = data - 'trigger' - 'retry_of' - 'reused_nodes' - 'retried_by'"
    )
    op.execute("UPDATE doc_execution_stats SET data = data - 'by_trigger'")
