"""The credentials list: metadata of each live credential (never a secret).

Revision ID: 0015_credentials
Revises: 0019_projects
Create Date: 2026-12-02

Written in the same transaction as each Credential event
(``commands/credentials.py``), as ``webhook_routes`` is: the secrets
themselves are only in the log, sealed under the organisation's data key.

And hook HMAC secrets move to ``webhook_secrets.hmac_sealed``, sealed under
the organisation's key (``commands/webhook_secrets.py``). A migration has no
master key, so the rows in clear stay as they are here; every process seals
them at start, after checking the master key.
"""

from alembic import op

revision = "0015_credentials"
down_revision = "0019_projects"
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
    op.execute("ALTER TABLE webhook_secrets ADD COLUMN hmac_sealed jsonb")
    op.execute("ALTER TABLE webhook_secrets DROP CONSTRAINT IF EXISTS webhook_secrets_check")
    op.execute(
        "ALTER TABLE webhook_secrets ADD CONSTRAINT webhook_secrets_one_secret "
        "CHECK (num_nonnulls(token_sha256, hmac_secret, hmac_sealed) = 1)"
    )


def downgrade() -> None:
    # Sealed hook secrets cannot be opened here (no master key): those hooks
    # need activating again after a downgrade.
    op.execute("DELETE FROM webhook_secrets WHERE hmac_sealed IS NOT NULL")
    op.execute("ALTER TABLE webhook_secrets DROP CONSTRAINT webhook_secrets_one_secret")
    op.execute("ALTER TABLE webhook_secrets DROP COLUMN hmac_sealed")
    op.execute(
        "ALTER TABLE webhook_secrets ADD CONSTRAINT webhook_secrets_check "
        "CHECK ((token_sha256 IS NULL) <> (hmac_secret IS NULL))"
    )
    op.execute("DROP TABLE credentials")
