"""Data keys, wrapped by the master key (``infrastructure/keyring.py``).

Revision ID: 0014_data_keys
Revises: 0013_failing_counters
Create Date: 2026-12-02

Not part of the log: a key is what the log's ciphertext needs to be read, and
destroying one (erasure, retention) must be possible, which the log refuses by
design. ``wrapped`` is NULL once a key is destroyed; the row stays, so a
destroyed scope is never silently re-keyed and the record says who and when.
"""

from alembic import op

revision = "0014_data_keys"
down_revision = "0013_failing_counters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE data_keys (
            key_id uuid PRIMARY KEY,
            org_id text NOT NULL,
            purpose text NOT NULL CHECK (purpose IN ('org', 'day', 'subject')),
            scope text NOT NULL,
            wrapped bytea,
            master_key_id text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            destroyed_at timestamptz,
            destroyed_by text,
            UNIQUE (org_id, purpose, scope),
            CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE data_keys")
