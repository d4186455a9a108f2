"""The credentials list: metadata of each live credential (never a secret).

Revision ID: 0015_credentials
Revises: 0014_data_keys
Create Date: 2026-12-02

Written in the same transaction as each Credential event
(``commands/credentials.py``), as ``webhook_routes`` is: the secrets
themselves are only in the log, sealed under the organisation's data key.
"""

from alembic import op

revision = "0015_credentials"
down_revision = "0014_data_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE credentials (
            id uuid PRIMARY KEY,
            org_id text NOT NULL,
            name text NOT NULL,
            type text NOT NULL,
            fingerprint text NOT NULL,
            key_id text NOT NULL,
            created_by text NOT NULL,
            created_at timestamptz NOT NULL,
            updated_by text NOT NULL,
            updated_at timestamptz NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX credentials_org ON credentials (org_id, id)")


def downgrade() -> None:
    op.execute("DROP TABLE credentials")
