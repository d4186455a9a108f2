"""The execution queue: executions waiting for a worker, and the leases of running ones.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A row lives from the Queued event to the terminal event, written in the
    # same transactions as those events. Workers claim rows with FOR UPDATE
    # SKIP LOCKED and hold them by a lease they renew while running; a row
    # whose lease expired belongs to a worker that died, and the next claim
    # finishes its execution (marks it crashed).
    op.execute(
        """
        CREATE TABLE execution_queue (
            execution_id uuid PRIMARY KEY,
            org_id text NOT NULL,
            workflow_id uuid NOT NULL,
            enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            claimed_by text,
            lease_expires_at timestamptz,
            claims integer NOT NULL DEFAULT 0
        )
        """
    )
    op.execute(
        "CREATE INDEX execution_queue_claimable "
        "ON execution_queue (lease_expires_at NULLS FIRST, enqueued_at)"
    )


def downgrade() -> None:
    op.execute("DROP TABLE execution_queue")
