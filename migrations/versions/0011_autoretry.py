"""Execution documents gain attempt and not_before (automatic retries).

Revision ID: 0011_autoretry
Revises: 0010
Create Date: 2026-12-02

Executions queued before attempts were counted are attempt 1 with no
back-off, which is what the projection writes for Queued events without the
fields, so documents written before it get the same here, in place: the view
equals its rebuild (``replay --check``) with no rebuild. A retry's back-off
needs no column of its own: its queue row is written with
``lease_expires_at`` at its not-before time (see ``infrastructure/queue.py``).
"""

from alembic import op

revision = "0011_autoretry"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        UPDATE doc_executions
        SET data = data || '{"attempt": 1, "not_before": null}'::jsonb
        WHERE NOT data ? 'attempt'
        """
    )


def downgrade() -> None:
    op.execute("UPDATE doc_executions SET data = data - 'attempt' - 'not_before'")
