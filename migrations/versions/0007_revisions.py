"""Revisions: a workflow's version is its definition's revision, not its stream version.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

Until now a workflow's ``version`` (views, ETag) was eventsourcing's stream
version, which every run (``Executed``) moved. It is now the revision: the
number of definition-changing events (``Created``, ``Updated``, ``Deleted``)
up to that point; runs leave it. The log itself needs no change (the
aggregate counts revisions as it applies events), but:

- the views hold the old numbers: ``doc_workflows`` in ``data.version`` and
  ``_version``, ``doc_workflow_versions`` in those and in ``_id``
  (``<workflow id>:<version>``). Each is recomputed from the log for the
  event it was built from (its ``_version``), so the views equal a rebuild
  (``reporunner replay --check``) without one.
- workflow snapshots hold aggregates without ``revision``. Each workflow's
  latest snapshot gets the revision of its version (the log gives it); the
  older ones, which only time travel to early versions reads, are deleted
  (loading those versions replays from the start instead).
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_WORKFLOW_TOPICS = "'domain.workflow:Workflow.%'"
_REVISION_TOPICS = (
    "ARRAY['domain.workflow:Workflow.Created', 'domain.workflow:Workflow.Updated', "
    "'domain.workflow:Workflow.Deleted']"
)

# (workflow id, stream version) -> revision at that event, for every workflow event.
_MAPPING = f"""
    CREATE TEMPORARY TABLE workflow_revisions AS
    SELECT originator_id::text AS workflow_id,
           originator_version AS version,
           count(*) FILTER (WHERE topic = ANY({_REVISION_TOPICS}))
               OVER (PARTITION BY originator_id ORDER BY originator_version) AS revision
    FROM reporunner_events
    WHERE topic LIKE {_WORKFLOW_TOPICS}
"""


def _mapping() -> None:
    op.execute(_MAPPING)
    op.execute("CREATE INDEX ON workflow_revisions (workflow_id, version)")
    op.execute("CREATE INDEX ON workflow_revisions (workflow_id, revision)")
    op.execute("ANALYZE workflow_revisions")


def upgrade() -> None:
    _mapping()
    op.execute(
        """
        UPDATE doc_workflows AS d
        SET _version = r.revision, data = jsonb_set(d.data, '{version}', to_jsonb(r.revision))
        FROM workflow_revisions AS r
        WHERE r.workflow_id = d._id AND r.version = d._version
        """
    )
    # Through a prefix no id has, so no new id meets an old one mid-statement.
    op.execute(
        """
        UPDATE doc_workflow_versions AS d
        SET _id = 'renumbered:' || r.workflow_id || ':' || r.revision,
            _version = r.revision,
            data = jsonb_set(d.data, '{version}', to_jsonb(r.revision))
        FROM workflow_revisions AS r
        WHERE r.workflow_id = d.data->>'workflow_id' AND r.version = d._version
        """
    )
    op.execute(
        "UPDATE doc_workflow_versions SET _id = substr(_id, length('renumbered:') + 1) "
        "WHERE _id LIKE 'renumbered:%'"
    )
    _upcast_snapshots()
    op.execute("DROP TABLE workflow_revisions")


def _upcast_snapshots() -> None:
    """Add ``revision`` to each workflow's latest snapshot; delete the older ones.

    In Python, with the event store's own JSON settings (eventsourcing's
    JSONTranscoder), so the stored bytes stay exactly as it would write
    them: a round trip through jsonb could change how numbers read back.
    """
    bind = op.get_bind()
    op.execute(
        "DELETE FROM reporunner_snapshots AS s "
        "WHERE convert_from(s.state, 'UTF8')::jsonb->>'topic' = 'domain.workflow:Workflow' "
        "AND EXISTS (SELECT 1 FROM reporunner_snapshots AS newer "
        "WHERE newer.originator_id = s.originator_id "
        "AND newer.originator_version > s.originator_version)"
    )
    rows = bind.execute(
        sa.text(
            "SELECT s.originator_id, s.originator_version, s.state, r.revision "
            "FROM reporunner_snapshots AS s JOIN workflow_revisions AS r "
            "ON r.workflow_id = s.originator_id::text AND r.version = s.originator_version "
            "WHERE convert_from(s.state, 'UTF8')::jsonb->>'topic' = 'domain.workflow:Workflow'"
        )
    ).fetchall()
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    for originator_id, version, state, revision in rows:
        snapshot = json.loads(bytes(state))
        snapshot["state"]["revision"] = revision
        bind.execute(
            sa.text(
                "UPDATE reporunner_snapshots SET state = :state "
                "WHERE originator_id = :id AND originator_version = :version"
            ),
            {
                "state": encoder.encode(snapshot).encode("utf8"),
                "id": originator_id,
                "version": version,
            },
        )


def downgrade() -> None:
    # Back to stream versions: a version document's is its revision's event;
    # a workflow document's is its stream's last event the view has applied.
    _mapping()
    op.execute(
        """
        UPDATE doc_workflow_versions AS d
        SET _id = 'renumbered:' || r.workflow_id || ':' || r.version,
            _version = r.version,
            data = jsonb_set(d.data, '{version}', to_jsonb(r.version))
        FROM (
            SELECT workflow_id, revision, min(version) AS version
            FROM workflow_revisions GROUP BY workflow_id, revision
        ) AS r
        WHERE r.workflow_id = d.data->>'workflow_id' AND r.revision = d._version
        """
    )
    op.execute(
        "UPDATE doc_workflow_versions SET _id = substr(_id, length('renumbered:') + 1) "
        "WHERE _id LIKE 'renumbered:%'"
    )
    op.execute(
        """
        UPDATE doc_workflows AS d
        SET _version = e.version, data = jsonb_set(d.data, '{version}', to_jsonb(e.version))
        FROM (
            SELECT originator_id::text AS workflow_id, max(originator_version) AS version
            FROM reporunner_events
            WHERE topic LIKE 'domain.workflow:Workflow.%'
              AND notification_id <= (
                  SELECT position FROM projection_tracking WHERE name = 'workflows'
              )
            GROUP BY originator_id
        ) AS e
        WHERE e.workflow_id = d._id
        """
    )
    op.execute("DROP TABLE workflow_revisions")
