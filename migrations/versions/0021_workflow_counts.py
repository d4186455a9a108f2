"""Each organisation's workflows (not deleted), counted exactly for ``max_workflows``.

Revision ID: 0021_workflow_counts
Revises: 0018_tenancy
Create Date: 2026-12-02

Kept in the transaction of every create (+1, refused past the limit) and
delete (-1), after the log's table lock (``commands/workflow_quota.py``), so
concurrent creates can never pass the limit, as the workflows view (which
trails the log) could. Counted here once from the log itself: a workflow is
one ``Created`` event, and a ``Deleted`` one ends it for good.
"""

import json
from collections import Counter

import sqlalchemy as sa
from alembic import op

revision = "0021_workflow_counts"
down_revision = "0018_tenancy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE organisation_workflows (
            org_id text PRIMARY KEY,
            workflows bigint NOT NULL CHECK (workflows >= 0)
        )
        """
    )
    # Read in Python, not cast to jsonb in SQL: events from before the value
    # contract may hold NaN or integers past 64 bits, which jsonb refuses and
    # Python's json reads (as the event mapper does).
    rows = op.get_bind().execute(
        sa.text(
            "SELECT c.state FROM reporunner_events c "
            "WHERE c.topic = 'domain.workflow:Workflow.Created' AND NOT EXISTS ("
            "SELECT 1 FROM reporunner_events d WHERE d.originator_id = c.originator_id "
            "AND d.topic = 'domain.workflow:Workflow.Deleted')"
        ).execution_options(stream_results=True, yield_per=10_000)
    )
    held = Counter(json.loads(bytes(state))["meta"]["org_id"] for (state,) in rows)
    if held:
        op.get_bind().execute(
            sa.text("INSERT INTO organisation_workflows (org_id, workflows) VALUES (:org, :n)"),
            [{"org": org, "n": n} for org, n in held.items()],
        )


def downgrade() -> None:
    op.execute("DROP TABLE organisation_workflows")
