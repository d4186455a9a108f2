"""Execution views: one document per execution, and pre-aggregated dashboard counters.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Both are ordinary collections (the doc_ table shape), so the projection's
# rebuild (shadow tables + swap) and verify (scratch-schema diff) cover them
# unchanged; rebuild copies these secondary indexes onto its shadow tables.
#
# doc_executions: a workflow's executions, newest first, are read through the
# (org, workflow_id, created) index (read_api.executions compares data->>'workflow_id'
# for it). Filters of /v1/executions compile to containment (data @> ...), which
# the GIN index serves (status, workflow_id, ...); the (org, created/updated)
# indexes serve that list's orders and keyset cursors, newest first by default.
# A btree on (org, status) would not be used: no query compares data->>'status'.
#
# doc_execution_stats: counter documents; their `created` column is the start
# of their hour or day bucket, so the summary reads a handful of index ranges:
# one scope (the org's totals, or one workflow's) by granularity and time, or
# every workflow's (top failing) by granularity and time.
INDEXES = {
    "doc_executions": [
        "CREATE INDEX doc_executions_data_gin ON doc_executions USING gin (data jsonb_path_ops)",
        "CREATE INDEX doc_executions_org_created ON doc_executions (org_id, created DESC, _id)",
        "CREATE INDEX doc_executions_org_updated ON doc_executions (org_id, updated DESC, _id)",
        "CREATE INDEX doc_executions_org_workflow_created ON doc_executions "
        "(org_id, (data->>'workflow_id'), created DESC, _id)",
    ],
    "doc_execution_stats": [
        "CREATE INDEX doc_execution_stats_scope ON doc_execution_stats "
        "(org_id, (data->>'granularity'), (data->>'workflow_id'), created)",
        "CREATE INDEX doc_execution_stats_time ON doc_execution_stats "
        "(org_id, (data->>'granularity'), created)",
    ],
}


def upgrade() -> None:
    for table, indexes in INDEXES.items():
        op.execute(
            f"""
            CREATE TABLE {table} (
                _id text PRIMARY KEY,
                org_id text NOT NULL,
                data jsonb NOT NULL,
                _version bigint NOT NULL,
                _position bigint NOT NULL,
                created timestamptz NOT NULL,
                updated timestamptz NOT NULL
            )
            """
        )
        for statement in indexes:
            op.execute(statement)


def downgrade() -> None:
    for table in INDEXES:
        op.execute(f"DROP TABLE {table}")
    # Forget how far the projection (and any rebuild of it) had got: its views are gone.
    op.execute(
        "DELETE FROM projection_tracking "
        "WHERE name = 'executions' OR starts_with(name, 'executions__')"
    )
