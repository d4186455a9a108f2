"""Retention and pins (issue 17): pin keys, and the index retention scans by.

Revision ID: 0017_retention
Revises: 0014_data_keys
Create Date: 2026-12-02

- ``data_keys`` purposes gain ``pin``: a pinned execution's payload is
  re-sealed under its own key, which retention never destroys (unpinning
  does; erasing the subject still erases it through the subject key).
- ``doc_executions (created, _id)``: retention walks the executions queued
  before a window's start, oldest first, across organisations, in bounded
  keyset batches. (A rebuild copies the live table's indexes.)
"""

from alembic import op

revision = "0017_retention"
down_revision = "0014_data_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE data_keys DROP CONSTRAINT data_keys_purpose_check")
    op.execute(
        "ALTER TABLE data_keys ADD CONSTRAINT data_keys_purpose_check "
        "CHECK (purpose IN ('org', 'day', 'subject', 'pin'))"
    )
    op.execute("CREATE INDEX doc_executions_created ON doc_executions (created, _id)")


def downgrade() -> None:
    op.execute("DROP INDEX doc_executions_created")
    op.execute("DELETE FROM data_keys WHERE purpose = 'pin'")
    op.execute("ALTER TABLE data_keys DROP CONSTRAINT data_keys_purpose_check")
    op.execute(
        "ALTER TABLE data_keys ADD CONSTRAINT data_keys_purpose_check "
        "CHECK (purpose IN ('org', 'day', 'subject'))"
    )
