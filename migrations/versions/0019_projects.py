"""Projects: key scope, and the projects list.

Revision ID: 0019_projects
Revises: 0020_templates
Create Date: 2026-12-02

``api_keys.project_id``: NULL for a key that sees its whole organisation, a
project's id for a key confined to that project (``infrastructure/auth.py``).

``projects``: the organisation's projects as their aggregates left them,
written in the same transaction as each project event (as ``webhook_routes``
is for workflows), so a list never waits for a follower. The default project
of an organisation (``domain/project.py: default_project_id``) has no row
until someone renames it: every list answers it.

``doc_workflows``: every document gets the ``project_id`` (its
organisation's default project: no workflow had another before) and the
empty ``shares`` that the projector now writes, so the live view equals a
rebuilt one without a rebuild; an index serves the scope's membership test.
"""

import uuid

import sqlalchemy as sa
from alembic import op

# domain/project.py's namespace (a migration never imports the live code it outlives).
_DEFAULT_PROJECT_NAMESPACE = uuid.UUID("2b6f4d1e-8c3a-4f57-a1d9-0e7c5b3a9f42")

revision = "0019_projects"
down_revision = "0020_templates"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS project_id uuid")
    op.execute(
        """
        CREATE TABLE projects (
            id uuid PRIMARY KEY,
            org_id text NOT NULL,
            name text NOT NULL,
            description text NOT NULL DEFAULT '',
            archived boolean NOT NULL DEFAULT false,
            version integer NOT NULL,
            created_at timestamptz NOT NULL,
            created_by text NOT NULL,
            updated_at timestamptz NOT NULL,
            updated_by text NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX projects_org_created ON projects (org_id, created_at, id)")
    conn = op.get_bind()
    orgs = conn.execute(sa.text("SELECT DISTINCT org_id FROM doc_workflows")).scalars().all()
    for org_id in orgs:
        conn.execute(
            sa.text(
                "UPDATE doc_workflows SET data = data || jsonb_build_object("
                "'project_id', CAST(:project AS text), 'shares', '{}'::jsonb) "
                "WHERE org_id = :org AND NOT data ? 'project_id'"
            ),
            {"org": org_id, "project": str(uuid.uuid5(_DEFAULT_PROJECT_NAMESPACE, org_id))},
        )
    op.execute(
        "CREATE INDEX doc_workflows_project ON doc_workflows (org_id, (data->>'project_id'))"
    )


def downgrade() -> None:
    op.execute("DROP INDEX doc_workflows_project")
    op.execute("DROP TABLE projects")
    op.execute("ALTER TABLE api_keys DROP COLUMN project_id")
