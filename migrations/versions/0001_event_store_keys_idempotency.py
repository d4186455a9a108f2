"""Event store (eventsourcing's schema), API keys, idempotency records.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The exact shape eventsourcing 9.5's PostgresApplicationRecorder expects.
    op.execute(
        """
        CREATE TYPE stored_event_uuid AS (
            originator_id uuid, originator_version bigint, topic text, state bytea
        )
        """
    )
    op.execute(
        """
        CREATE TABLE reporunner_events (
            originator_id uuid NOT NULL,
            originator_version bigint NOT NULL,
            topic text,
            state bytea,
            notification_id bigserial,
            PRIMARY KEY (originator_id, originator_version)
        ) WITH (
            autovacuum_enabled = true,
            autovacuum_vacuum_threshold = 100000000,
            autovacuum_vacuum_scale_factor = 0.5,
            autovacuum_analyze_threshold = 1000,
            autovacuum_analyze_scale_factor = 0.01
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX reporunner_events_notification_id_idx "
        "ON reporunner_events (notification_id ASC)"
    )
    # Append-only: the log is the audit trail, so no UPDATE, DELETE or TRUNCATE.
    op.execute(
        """
        CREATE FUNCTION reporunner_events_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'reporunner_events is append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END;
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER reporunner_events_no_update_delete "
        "BEFORE UPDATE OR DELETE ON reporunner_events "
        "FOR EACH ROW EXECUTE FUNCTION reporunner_events_append_only()"
    )
    op.execute(
        "CREATE TRIGGER reporunner_events_no_truncate "
        "BEFORE TRUNCATE ON reporunner_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION reporunner_events_append_only()"
    )
    op.execute(
        """
        CREATE TABLE reporunner_snapshots (
            originator_id uuid NOT NULL,
            originator_version bigint NOT NULL,
            topic text,
            state bytea,
            PRIMARY KEY (originator_id, originator_version)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE api_keys (
            id uuid PRIMARY KEY,
            org_id text NOT NULL,
            role text NOT NULL CHECK (role IN ('owner', 'editor', 'viewer', 'auditor')),
            name text NOT NULL DEFAULT '',
            key_hash bytea NOT NULL UNIQUE,
            key_prefix text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX api_keys_org_idx ON api_keys (org_id)")
    op.execute(
        """
        CREATE TABLE idempotency_keys (
            org_id text NOT NULL,
            key text NOT NULL,
            request_hash text NOT NULL,
            aggregate_id uuid NOT NULL,
            aggregate_version bigint NOT NULL,
            status_code integer NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (org_id, key)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE idempotency_keys")
    op.execute("DROP TABLE api_keys")
    op.execute("DROP TABLE reporunner_snapshots")
    op.execute("DROP TABLE reporunner_events")
    op.execute("DROP FUNCTION reporunner_events_append_only()")
    op.execute("DROP TYPE stored_event_uuid")
