"""``max_workflows``, exact: each organisation's workflows (not deleted), counted in the log's
transaction.

Every create adds one to ``organisation_workflows`` and every delete takes
one away, in the transaction that records its event and after the log's
table lock (``SideStatement.after_lock``), where saves run one at a time. A
create past the organisation's limit (its own, else the global setting; 0:
none) changes no row, so its whole save fails and nothing is recorded:
concurrent creates, from any door (the API, imports, templates, the CLI),
never pass the limit. The count itself is kept whether or not a limit
applies, so a limit set later is exact from its first create.
"""

from __future__ import annotations

from commands.application import WorkflowApplication
from infrastructure.eventstore import SideStatement

_NO_LIMIT = 2**63 - 1

_COUNT_CREATE = (
    "INSERT INTO organisation_workflows AS c (org_id, workflows) VALUES (%s, 1) "
    "ON CONFLICT (org_id) DO UPDATE SET workflows = c.workflows + 1 "
    "WHERE c.workflows < coalesce((SELECT (o.limits->>'max_workflows')::bigint "
    "FROM organisations o WHERE o.org_id = c.org_id), nullif(%s, 0), %s)"
)
_COUNT_DELETE = (
    "UPDATE organisation_workflows SET workflows = workflows - 1 "
    "WHERE org_id = %s AND workflows > 0"
)


def count_create(org_id: str, default_limit: int) -> SideStatement:
    """One workflow more for ``org_id``; the save fails (``IntegrityError``) past its limit."""
    return SideStatement(
        _COUNT_CREATE, (org_id, default_limit, _NO_LIMIT), expect_row=True, after_lock=True
    )


def count_delete(org_id: str) -> SideStatement:
    return SideStatement(_COUNT_DELETE, (org_id,), after_lock=True)


def reached_limit(
    app: WorkflowApplication, org_id: str, default_limit: int
) -> tuple[int, int] | None:
    """(workflows held, limit) when ``org_id`` holds as many as its limit allows, else None:
    after a failed create, whether the limit is what refused it."""
    with app.event_store.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(
            "SELECT (SELECT workflows FROM organisation_workflows WHERE org_id = %s) AS held, "
            "(SELECT (limits->>'max_workflows')::bigint FROM organisations WHERE org_id = %s) "
            "AS own",
            (org_id, org_id),
        )
        row = curs.fetchone()
    assert row is not None
    limit = int(default_limit if row["own"] is None else row["own"])
    held = int(row["held"] or 0)
    return (held, limit) if 0 < limit <= held else None
