"""Counter documents stored uncompressed, in line.

Revision ID: 0022_inline_counters
Revises: 0021_workflow_counts
Create Date: 2026-12-03

A month or day counter of an organisation holds a duration histogram of
100-200 buckets: 2-5 kB of jsonb, past PostgreSQL's 2 kB threshold, so it
was stored compressed, and every ``data->>'field'`` the dashboard summary
reads decompressed the whole document again. With ``toast_tuple_target`` at
its maximum, documents up to ~8 kB stay in line as they are (the table grows
by under 2 %). Rows already stored compressed stay so until next written
(the projection rewrites the current buckets' counters as runs arrive; a
rebuild rewrites all of them).
"""

from alembic import op

revision = "0022_inline_counters"
down_revision = "0021_workflow_counts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE doc_execution_stats SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    op.execute("ALTER TABLE doc_execution_stats RESET (toast_tuple_target)")
