"""Audit chain: a hash chain over the whole log, with signed checkpoints.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

See ``infrastructure/audit.py`` for what the links and signatures cover and
``projections/audit_chain.py`` for the follower that writes these tables.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One link per event (40 bytes of payload a row): verification then names
    # the exact position of an altered, deleted or inserted event.
    op.execute(
        """
        CREATE TABLE audit_chain (
            position bigint PRIMARY KEY,
            link bytea NOT NULL
        )
        """
    )
    # Every N events a signed (position, count, link): someone who rewrites the
    # per-event links without the key is caught at the next checkpoint.
    op.execute(
        """
        CREATE TABLE audit_chain_checkpoints (
            position bigint PRIMARY KEY,
            count bigint NOT NULL,
            link bytea NOT NULL,
            hmac bytea,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # Where the follower is, signed in every batch's transaction, so the newest
    # events are covered by a signature too, not only those up to a checkpoint.
    op.execute(
        """
        CREATE TABLE audit_chain_head (
            name text PRIMARY KEY,
            position bigint NOT NULL DEFAULT 0,
            count bigint NOT NULL DEFAULT 0,
            link bytea NOT NULL DEFAULT decode(repeat('00', 32), 'hex'),  -- the genesis link
            hmac bytea,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("INSERT INTO audit_chain_head (name) VALUES ('audit-chain')")
    # Mirrors the head's position so `projections status`-style lag checks see it.
    op.execute(
        "INSERT INTO projection_tracking (name) VALUES ('audit-chain') ON CONFLICT DO NOTHING"
    )
    # Links and checkpoints are only ever appended; refuse accidents (the
    # signatures, not this trigger, are what stops a deliberate rewrite).
    op.execute(
        """
        CREATE FUNCTION audit_chain_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END;
        $$
        """
    )
    for table in ("audit_chain", "audit_chain_checkpoints"):
        op.execute(
            f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_chain_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_append_only()"
        )


def downgrade() -> None:
    op.execute("DELETE FROM projection_tracking WHERE name = 'audit-chain'")
    op.execute("DROP TABLE audit_chain_head")
    op.execute("DROP TABLE audit_chain_checkpoints")
    op.execute("DROP TABLE audit_chain")
    op.execute("DROP FUNCTION audit_chain_append_only()")
