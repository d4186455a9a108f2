"""Month counters for the dashboard summary over long ranges.

Revision ID: 0012_dashboards
Revises: 0011_autoretry
Create Date: 2026-12-02

The executions projection now also counts each execution in its UTC month
(``granularity`` "month", beside hour and day). A month's counters are the
sum of its days': every counter move of an execution reaches its day and its
month alike, so the sums, the version (moves counted), the position (the
last move's) and ``updated`` (taken with that position) are exactly what
the projection would have written: the view equals its rebuild
(``replay --check``) with no rebuild. Downgrading deletes them.
"""

from alembic import op

revision = "0012_dashboards"
down_revision = "0011_autoretry"
branch_labels = None
depends_on = None

_STATUSES = ("queued", "running", "succeeded", "failed", "canceled", "crashed")
_ISO = "to_char(month AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"')"


def _merged(field: str) -> str:
    """The per-key sums of a {key: count} object over the grouped day counters."""
    return (
        "(SELECT coalesce(jsonb_object_agg(key, n), '{}') FROM ("
        "SELECT o.key, sum(o.value::bigint) AS n "
        f"FROM unnest(array_agg(coalesce(data->'{field}', '{{}}'))) AS m(object) "
        "CROSS JOIN LATERAL jsonb_each_text(m.object) AS o GROUP BY o.key) s)"
    )


def upgrade() -> None:
    sums = ", ".join(
        f"'{field}', sum((data->>'{field}')::bigint)"
        for field in ("executions", *_STATUSES, "duration_ms_sum", "duration_count")
    )
    op.execute(
        f"""
        INSERT INTO doc_execution_stats (_id, org_id, data, _version, _position, created, updated)
        SELECT org_id || ':month:' || coalesce(workflow_id, '*') || ':' || {_ISO},
               org_id,
               jsonb_build_object(
                   'workflow_id', workflow_id, 'granularity', 'month', 'bucket', {_ISO},
                   {sums},
                   'by_trigger', {_merged("by_trigger")},
                   'duration_hist', {_merged("duration_hist")}
               ),
               sum(_version), max(_position), month,
               (array_agg(updated ORDER BY _position DESC))[1]
        FROM (
            SELECT *, data->>'workflow_id' AS workflow_id,
                   date_trunc('month', created, 'UTC') AS month
            FROM doc_execution_stats WHERE data->>'granularity' = 'day'
        ) days
        GROUP BY org_id, workflow_id, month
        """
    )


def downgrade() -> None:
    op.execute("DELETE FROM doc_execution_stats WHERE data->>'granularity' = 'month'")
