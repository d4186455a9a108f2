"""Organisations, their daily execution counts, and API keys with expiry and project.

Revision ID: 0018_tenancy
Revises: 0015_credentials
Create Date: 2026-12-02

``organisations`` holds each Organisation aggregate's current state, written
in the same transaction as its events (as ``webhook_routes`` is for
workflows), so the admin API lists it and every request's policy look-up
reads one row without loading the aggregate. An organisation without a row
(one that exists only as the string on its keys) is active with the global
limits. ``organisation_day_executions`` counts each organisation's runs per
UTC day where an executions-per-day limit applies (one row per day).
"""

from alembic import op

revision = "0018_tenancy"
down_revision = "0015_credentials"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS expires_at timestamptz NULL")
    op.execute("ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_role_check")
    op.execute(
        "ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check CHECK "
        "(role IN ('owner', 'editor', 'viewer', 'auditor', 'platform_admin'))"
    )
    op.execute(
        """
        CREATE TABLE organisations (
            org_id text PRIMARY KEY,
            aggregate_id uuid NOT NULL UNIQUE,
            name text NOT NULL,
            status text NOT NULL CHECK (status IN ('active', 'suspended')),
            suspended_reason text,
            limits jsonb NOT NULL DEFAULT '{}',
            version bigint NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE organisation_day_executions (
            org_id text NOT NULL,
            day date NOT NULL,
            executions integer NOT NULL,
            PRIMARY KEY (org_id, day)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE organisation_day_executions")
    op.execute("DROP TABLE organisations")
    op.execute("DELETE FROM api_keys WHERE role = 'platform_admin'")
    op.execute("ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check")
    op.execute(
        "ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check CHECK "
        "(role IN ('owner', 'editor', 'viewer', 'auditor'))"
    )
    op.execute("ALTER TABLE api_keys DROP COLUMN expires_at")
