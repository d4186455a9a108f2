"""The template catalogue: what ``GET /v1/templates`` lists and searches.

Revision ID: 0020_templates
Revises: 0017_retention
Create Date: 2026-12-02

Written in the same transaction as each Template event (as ``webhook_routes``
is with workflows), so a publish is listed the moment it is answered, and it
can be rebuilt from the log. Not one of the organisation-scoped document
views: a public template is read by every organisation.
"""

from alembic import op

revision = "0020_templates"
down_revision = "0017_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE templates (
            template_id uuid PRIMARY KEY,
            org_id text NOT NULL,
            visibility text NOT NULL CHECK (visibility IN ('organisation', 'public')),
            name text NOT NULL,
            description text NOT NULL,
            -- The summary a list shows, and the definition a GET of one shows.
            summary jsonb NOT NULL,
            definition jsonb NOT NULL,
            published_at timestamptz NOT NULL,
            unpublished_at timestamptz
        )
        """
    )
    # Lists walk newest first, by (published_at, template_id), per organisation
    # and over the public ones; unpublished templates are never listed.
    op.execute(
        "CREATE INDEX templates_org_listed ON templates (org_id, published_at DESC, template_id "
        "DESC) WHERE unpublished_at IS NULL"
    )
    op.execute(
        "CREATE INDEX templates_public_listed ON templates (published_at DESC, template_id DESC) "
        "WHERE unpublished_at IS NULL AND visibility = 'public'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE templates")
